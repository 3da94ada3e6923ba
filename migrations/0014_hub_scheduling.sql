-- Sends at send_at for providers that cannot schedule (telecom23, swift, carrierx): the hub keeps
-- the message (dispatch_at: when the worker sends it) and its recipients `scheduled`; the worker
-- claims due ones through the index (FOR UPDATE SKIP LOCKED), clears dispatch_at and records
-- dispatched_at before it calls the provider, so that none is ever sent twice. A message
-- cancelled before that has cancelled_at.
ALTER TABLE messages ADD COLUMN dispatch_at timestamptz;
ALTER TABLE messages ADD COLUMN dispatched_at timestamptz;
ALTER TABLE messages ADD COLUMN cancelled_at timestamptz;
CREATE INDEX messages_dispatch_due_idx ON messages (dispatch_at) WHERE dispatch_at IS NOT NULL;
