-- The sha256 of a concept's artifact (from the worker's concept.ready event): generation payloads carry it
-- so workers can cache concept files by content.
ALTER TABLE concepts ADD COLUMN sha256 TEXT;
