-- A claim takes each subscription's oldest due deliveries up to its free slots (so that one
-- subscriber's backlog never fills the claim): due deliveries by subscription, in time order.
-- It replaces the index of due deliveries in time order alone, which nothing reads any more.
CREATE INDEX deliveries_due_by_subscription_idx ON deliveries (subscription_id, next_attempt_at)
    WHERE status IN ('pending', 'delivering');
DROP INDEX deliveries_due_idx;
