-- Reference identity (issue 14.1) and "no training another person's face" (issue 11.5).
-- face_references: the mean dlib descriptor (128 little-endian float64, 1024 bytes) of a face concept's accepted
-- selfies. Deleted with the concept and with the user (cascade): /forget removes it. Never exported or logged.
CREATE TABLE face_references (
    concept_id      INTEGER PRIMARY KEY REFERENCES concepts(id) ON DELETE CASCADE,
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    descriptor      BLOB NOT NULL,
    photo_count     INTEGER NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX face_references_user ON face_references (user_id);

-- A server admin's allowance for two look-alike members (twins) to each train a face that matches the other's.
-- Stored with user_a < user_b; goes with either user (cascade).
CREATE TABLE lookalike_allowances (
    guild_id        INTEGER NOT NULL,
    user_a          INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_b          INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_by      INTEGER,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_a, user_b)
);

-- Best-of-N per server: candidates generated per image shown (NULL = the default, 2; 1 = off).
ALTER TABLE guild_settings ADD COLUMN best_of INTEGER;
