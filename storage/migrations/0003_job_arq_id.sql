-- The arq job id of a job's newest attempt (a training's latest slice, from the worker's events), so the bot can
-- abort, inspect and find the queue position of exactly that arq job without scanning Redis.
ALTER TABLE jobs ADD COLUMN arq_id TEXT;
