-- Event destinations beyond webhooks (issue 25): a subscription delivers to a webhook URL, or
-- to a broker the settings name (NATS JetStream, RabbitMQ). `destination` holds the broker's
-- name (never its URL or credentials, which stay in the settings) and where on it: {"kind":
-- "jetstream", "name", "subject"} or {"kind": "rabbitmq", "name", "exchange", "routing_key"}.
ALTER TABLE subscriptions ALTER COLUMN url DROP NOT NULL;
ALTER TABLE subscriptions ADD COLUMN destination jsonb;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_one_destination
    CHECK ((url IS NULL) <> (destination IS NULL));
