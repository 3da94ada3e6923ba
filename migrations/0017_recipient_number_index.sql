-- The index on a recipient's number covered every row, and for the statements that name a
-- recipient by its key (provider, provider_message_id, recipient) its cost tied with the unique
-- index on those three: store_events' update of a recipient on every report, run with a generic
-- plan, could take either, and took the number's index, walking every row of a number that had
-- many messages (measured with bench/growth.py: 0.26 ms instead of 0.036 ms a report at 100,000
-- recipients, G/C 0.59). Lookups by number always join the messages the hub sent, so the index
-- keeps those rows only, and can no longer serve a statement that does not say so.
-- Building it blocks writes to message_recipients meanwhile (seconds per million rows).
DROP INDEX message_recipients_recipient_idx;
CREATE INDEX message_recipients_recipient_idx ON message_recipients (recipient)
    WHERE message_id IS NOT NULL;
