-- The destination country of each recipient of a message the hub sent (ISO 3166, from the
-- number's calling code and range), for the per-country statistics and allow-list (issue 15).
ALTER TABLE message_recipients ADD COLUMN country text;

-- A recipient keeps its country when it takes the provider's id.
CREATE OR REPLACE FUNCTION adopt_recipient(p_message_id uuid, p_provider text, p_pending_id text, p_provider_message_id text, p_recipient text) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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
         segments, deadline, country)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, p_recipient, pending.status,
         pending.final, pending.sequence, pending.segments, pending.deadline, pending.country)
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
    -- Reports that outran the send answer: the row is the message's now, with its deadline.
    UPDATE message_recipients SET message_id = p_message_id,
        deadline = coalesce(deadline, pending.deadline),
        country = coalesce(country, pending.country), updated_at = now()
    WHERE id = found_row;
    UPDATE events SET message_id = p_message_id, recipient = coalesce(recipient, p_recipient)
    WHERE recipient_id = found_row AND message_id IS NULL;
    DELETE FROM message_recipients WHERE id = pending.id;
    RETURN found_row;
END
$$;
