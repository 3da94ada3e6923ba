-- Sending through the hub: what was asked, the provider's answers kept as raw payloads, the
-- Idempotency-Key memory, and the hand-over of a recipient from "sent, id not known yet" to the
-- provider's id.

ALTER TABLE raw_callbacks
    ADD COLUMN source text NOT NULL DEFAULT 'callback'
        CHECK (source IN ('callback', 'send_answer'));

ALTER TABLE messages
    ADD COLUMN request jsonb,
    ADD COLUMN send_at timestamptz,
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN provider_segments integer,
    ADD COLUMN idempotency_key text;

-- One row per key: claimed (response null) while the first request runs, then its answer.
CREATE TABLE idempotency_keys (
    key              text PRIMARY KEY,
    request_hash     text NOT NULL,
    response_status  integer,
    response_body    jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);

-- Before the provider is called, each recipient is stored under a provisional id
-- (`pending:<message id>`). Once the provider names its id, the row takes it; if reports under
-- that id arrived first (orphans), their row is adopted instead and the provisional one, which
-- has no events yet, is dropped. Returns the recipient row's id, or null when the provider's id
-- already belongs to another message.
CREATE FUNCTION adopt_recipient(
    p_message_id uuid,
    p_provider text,
    p_pending_id text,
    p_provider_message_id text,
    p_recipient text
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    pending_row bigint;
    found_row bigint;
    owner uuid;
BEGIN
    SELECT mr.id INTO pending_row FROM message_recipients mr
    WHERE mr.provider = p_provider AND mr.provider_message_id = p_pending_id
      AND mr.recipient = p_recipient
    FOR UPDATE;
    SELECT mr.id, mr.message_id INTO found_row, owner FROM message_recipients mr
    WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
      AND mr.recipient = p_recipient
    FOR UPDATE;
    IF found_row IS NULL THEN
        UPDATE message_recipients
        SET provider_message_id = p_provider_message_id, updated_at = now()
        WHERE id = pending_row;
        RETURN pending_row;
    END IF;
    IF owner IS NOT NULL AND owner <> p_message_id THEN
        -- The provider gave an id it gave another message: keep the provisional id (the
        -- caller logs it) rather than mix two messages' reports.
        RETURN NULL;
    END IF;
    UPDATE message_recipients SET message_id = p_message_id, updated_at = now()
    WHERE id = found_row;
    UPDATE events SET message_id = p_message_id
    WHERE recipient_id = found_row AND message_id IS NULL;
    DELETE FROM message_recipients WHERE id = pending_row;
    RETURN found_row;
END
$$;
