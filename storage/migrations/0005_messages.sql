-- Every Discord message that shows a user's face, images or prompt (whoever posted it: the worker's edit of the
-- original reply or its fallback channel message, the bot's own delivery, the queued-reply echo, an export DM),
-- so /forget can delete each one by id. No foreign key: a message may be recorded before or without a job row;
-- delete_user removes the user's rows explicitly.
CREATE TABLE messages (
    channel_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    job_id INTEGER,
    kind TEXT NOT NULL,
    guild_id INTEGER,
    created_at TEXT NOT NULL,
    PRIMARY KEY (channel_id, message_id)
);
CREATE INDEX messages_user ON messages (user_id);
