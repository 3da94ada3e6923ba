-- The console lists the deliveries given up on most recently (to retry one): without an index
-- that read every delivery (the outbox holds millions). Only failed rows are in it, so the
-- dispatcher's hot path never writes to it.
CREATE INDEX deliveries_failed_idx ON deliveries (updated_at) WHERE status = 'failed';
