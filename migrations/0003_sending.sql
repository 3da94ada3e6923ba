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
-- (`pending:<message id>`). Once the provider names its id, the recipient moves under it; if
-- reports under that id arrived first (orphans, possibly without a handset when the provider's
-- reports leave it out), their row is adopted instead and the provisional one, which has no
-- events yet, is dropped. Returns the recipient row's id; 0 when the message has no such
-- recipient; null when the provider's id already belongs to another message.
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
    pending record;
    found_row bigint;
    owner uuid;
BEGIN
    SELECT * INTO pending FROM message_recipients mr
    WHERE mr.provider = p_provider AND mr.provider_message_id = p_pending_id
      AND mr.recipient = p_recipient
    FOR UPDATE;
    IF pending.id IS NULL THEN
        RETURN 0;
    END IF;
    -- Taking the key with ON CONFLICT waits for a report storing it at this moment, so the
    -- two never both create it.
    INSERT INTO message_recipients AS mr
        (message_id, provider, provider_message_id, recipient, status, final, sequence,
         segments)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, p_recipient, pending.status,
         pending.final, pending.sequence, pending.segments)
    ON CONFLICT (provider, provider_message_id, recipient) DO NOTHING
    RETURNING mr.id INTO found_row;
    IF found_row IS NOT NULL THEN
        -- No report under that id for this handset: but one without a handset may exist.
        PERFORM 1 FROM message_recipients mr
        WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
          AND mr.recipient = '' AND mr.message_id IS NULL;
        IF FOUND THEN
            DELETE FROM message_recipients WHERE id = found_row;
            UPDATE message_recipients mr SET recipient = p_recipient, updated_at = now()
            WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
              AND mr.recipient = ''
            RETURNING mr.id INTO found_row;
        ELSE
            DELETE FROM message_recipients WHERE id = pending.id;
            RETURN found_row;
        END IF;
    END IF;
    SELECT mr.id, mr.message_id INTO found_row, owner FROM message_recipients mr
    WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
      AND mr.recipient = p_recipient
    FOR UPDATE;
    IF owner IS NOT NULL AND owner <> p_message_id THEN
        -- The provider gave an id it gave another message: keep the provisional id (the
        -- caller logs it) rather than mix two messages' reports.
        RETURN NULL;
    END IF;
    UPDATE message_recipients SET message_id = p_message_id, updated_at = now()
    WHERE id = found_row;
    UPDATE events SET message_id = p_message_id, recipient = coalesce(recipient, p_recipient)
    WHERE recipient_id = found_row AND message_id IS NULL;
    DELETE FROM message_recipients WHERE id = pending.id;
    RETURN found_row;
END
$$;

-- Replaces 0002's: a report that leaves out the handset goes to the provider id's only
-- recipient when it has exactly one (23 Telecom's fields are chosen per account).
CREATE OR REPLACE FUNCTION event_recipient_key(ev jsonb)
RETURNS TABLE (provider text, provider_message_id text, recipient text, part_id text)
LANGUAGE sql STABLE AS $$
    SELECT ev->>'provider',
           coalesce(owner.provider_message_id, ev->>'provider_message_id'),
           coalesce(owner.recipient, ev->>'recipient', only_one.recipient, ''),
           coalesce(ev->>'provider_part_id', rp.part_id)
    FROM (SELECT 1) AS one
    LEFT JOIN recipient_parts rp
           ON ev->>'provider_part_id' IS NULL
          AND rp.provider = ev->>'provider' AND rp.part_id = ev->>'provider_message_id'
    LEFT JOIN message_recipients owner ON owner.id = rp.recipient_id
    LEFT JOIN LATERAL (
        SELECT min(mr.recipient) AS recipient FROM message_recipients mr
        WHERE ev->>'recipient' IS NULL AND rp.part_id IS NULL
          AND mr.provider = ev->>'provider'
          AND mr.provider_message_id = ev->>'provider_message_id'
        HAVING count(*) = 1
    ) only_one ON true
    WHERE ev->>'type' = 'message.status' AND ev->>'provider_message_id' IS NOT NULL
$$;
