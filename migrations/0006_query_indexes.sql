-- Indexes for the query API: the message list (newest first), messages to a handset and replies
-- to them, inbound replies, and statistics over a time window.
CREATE INDEX messages_created_idx ON messages (created_at DESC, id DESC);
CREATE INDEX messages_sender_idx ON messages (sender, created_at);
CREATE INDEX message_recipients_recipient_idx ON message_recipients (recipient);
CREATE INDEX events_inbound_idx ON events (stored_at DESC, id DESC)
    WHERE type = 'message.inbound';
CREATE INDEX events_stored_idx ON events (stored_at);
