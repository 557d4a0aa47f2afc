-- kitbooth: foreign_keys off
-- Issue 13: two more training methods, and DreamBooth for faces only where a server allows it.
-- allow_dreambooth: members may train their face with DreamBooth, the heaviest method — off unless a server admin
-- turns it on (/kitbooth settings allow_dreambooth). Kits and styles (trained by managers) need no allowance.
ALTER TABLE guild_settings ADD COLUMN allow_dreambooth INTEGER NOT NULL DEFAULT 0;

-- concepts.method may now also be 'dreambooth' or 'hypernetwork'. SQLite cannot alter a CHECK constraint, so the
-- table is rebuilt (same columns, same order, same ids and AUTOINCREMENT sequence; the children's REFERENCES name
-- the table, so they point at the new one), with foreign keys off for the drop (storage/db.py).
CREATE TABLE concepts_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id        INTEGER REFERENCES users(id) ON DELETE CASCADE,  -- face: the person; kit/style: creator
    guild_id        INTEGER,
    kind            TEXT NOT NULL CHECK (kind IN ('face', 'kit', 'style')),
    name            TEXT NOT NULL,
    trigger_tokens  TEXT NOT NULL DEFAULT '[]',     -- JSON list
    method          TEXT NOT NULL
                    CHECK (method IN ('pivotal', 'lora', 'ti', 'imported', 'dreambooth', 'hypernetwork')),
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'training', 'ready', 'failed', 'superseded')),
    artifact_key    TEXT,
    size_bytes      INTEGER,
    error           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    sha256          TEXT
);
INSERT INTO concepts_new (id, owner_id, guild_id, kind, name, trigger_tokens, method, status, artifact_key,
                          size_bytes, error, created_at, updated_at, sha256)
    SELECT id, owner_id, guild_id, kind, name, trigger_tokens, method, status, artifact_key, size_bytes, error,
           created_at, updated_at, sha256 FROM concepts;
DELETE FROM sqlite_sequence WHERE name = 'concepts_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'concepts_new', seq FROM sqlite_sequence WHERE name = 'concepts';
DROP TABLE concepts;
ALTER TABLE concepts_new RENAME TO concepts;
CREATE INDEX concepts_owner ON concepts (owner_id, kind, status);
CREATE INDEX concepts_guild ON concepts (guild_id, kind);
