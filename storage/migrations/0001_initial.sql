-- Users, concepts, the per-guild kit/style catalogue, jobs and outputs.
-- Times are ISO-8601 UTC text. Discord snowflakes are INTEGER.

CREATE TABLE users (
    id              INTEGER PRIMARY KEY,            -- Discord user id
    consent_at      TEXT,                           -- when the user consented to face training
    daily_quota     INTEGER,                        -- per-user override; NULL = guild/default quota
    created_at      TEXT NOT NULL
);

CREATE TABLE concepts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id        INTEGER REFERENCES users(id) ON DELETE CASCADE,  -- face: the person; kit/style: creator
    guild_id        INTEGER,
    kind            TEXT NOT NULL CHECK (kind IN ('face', 'kit', 'style')),
    name            TEXT NOT NULL,
    trigger_tokens  TEXT NOT NULL DEFAULT '[]',     -- JSON list
    method          TEXT NOT NULL CHECK (method IN ('pivotal', 'lora', 'ti', 'imported')),
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'training', 'ready', 'failed', 'superseded')),
    artifact_key    TEXT,
    size_bytes      INTEGER,
    error           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX concepts_owner ON concepts (owner_id, kind, status);
CREATE INDEX concepts_guild ON concepts (guild_id, kind);

CREATE TABLE kits (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id        INTEGER NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'kit' CHECK (kind IN ('kit', 'style')),
    name            TEXT NOT NULL,
    description     TEXT NOT NULL,                  -- words describing the kit/style, used in prompts
    concept_id      INTEGER REFERENCES concepts(id) ON DELETE SET NULL,
    preview_key     TEXT,
    created_by      INTEGER,
    created_at      TEXT NOT NULL,
    UNIQUE (guild_id, kind, name COLLATE NOCASE)
);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,                  -- train | generate | upscale | vary | ...
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id        INTEGER,
    channel_id      INTEGER,
    interaction_id  INTEGER,
    message_id      INTEGER,
    concept_id      INTEGER REFERENCES concepts(id) ON DELETE SET NULL,
    status          TEXT NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    payload         TEXT NOT NULL DEFAULT '{}',     -- JSON; the contract payload sent to the worker
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    updated_at      TEXT NOT NULL
);
CREATE INDEX jobs_user ON jobs (user_id, status);
CREATE INDEX jobs_status ON jobs (status);

CREATE TABLE outputs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    artifact_key    TEXT NOT NULL,
    seed            INTEGER,
    created_at      TEXT NOT NULL
);
CREATE INDEX outputs_user ON outputs (user_id);

CREATE TABLE guild_settings (
    guild_id        INTEGER PRIMARY KEY,
    daily_quota     INTEGER,                        -- NULL = the deployment default
    train_role_ids  TEXT NOT NULL DEFAULT '[]',     -- JSON list; empty = everyone may train
    nsfw_policy     TEXT NOT NULL DEFAULT '{}',     -- JSON {channel_id: "block" | "allow"}
    catalogue_seeded_at TEXT
);
