-- Squad photos (issue 15): several consenting members in one picture.
-- squads: one request; squad_members: everyone in it (position 0 = the requester, then member1..member4 in
-- the order named, which is the reading order of the faces), each with their own answer and a random token
-- that their Approve/Decline buttons carry (a forged custom id names no token the row holds).
-- squad_prefs / squad_blocks: a member's invitation settings (/me squads, /me block).
-- No foreign keys to users: a member's rows go explicitly when they /forget (bot.squad_forget).
CREATE TABLE squads (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    requester_id    INTEGER NOT NULL,
    guild_id        INTEGER NOT NULL,
    channel_id      INTEGER NOT NULL,
    prompt          TEXT NOT NULL,
    kit             TEXT NOT NULL,
    style           TEXT,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'queued', 'declined', 'expired', 'cancelled')),
    job_id          INTEGER,                        -- the job row once everyone approved
    created_at      TEXT NOT NULL,
    expires_at      REAL NOT NULL                   -- epoch seconds: a pending squad past it is expired
);
CREATE INDEX squads_status ON squads (status, expires_at);
CREATE INDEX squads_job ON squads (job_id);

CREATE TABLE squad_members (
    squad_id        INTEGER NOT NULL REFERENCES squads(id) ON DELETE CASCADE,
    user_id         INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    answer          TEXT NOT NULL DEFAULT 'pending' CHECK (answer IN ('pending', 'approved', 'declined')),
    token           TEXT NOT NULL,
    concept_id      INTEGER,                        -- the face approved for this job (set on approval)
    answered_at     TEXT,
    PRIMARY KEY (squad_id, user_id)
);
CREATE INDEX squad_members_user ON squad_members (user_id);

CREATE TABLE squad_prefs (
    user_id         INTEGER PRIMARY KEY,
    invitations     INTEGER NOT NULL DEFAULT 1      -- 0: nobody can name this member in a squad
);

CREATE TABLE squad_blocks (
    user_id         INTEGER NOT NULL,               -- who blocks
    blocked_id      INTEGER NOT NULL,               -- whom they block from inviting them
    PRIMARY KEY (user_id, blocked_id)
);
CREATE INDEX squad_blocks_blocked ON squad_blocks (blocked_id);

-- Every message of a squad (the request, the invitations, the notices): each member's /forget deletes them.
CREATE TABLE squad_messages (
    squad_id        INTEGER NOT NULL REFERENCES squads(id) ON DELETE CASCADE,
    channel_id      INTEGER NOT NULL,
    message_id      INTEGER NOT NULL,
    PRIMARY KEY (channel_id, message_id)
);
CREATE INDEX squad_messages_squad ON squad_messages (squad_id);
