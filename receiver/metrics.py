"""The hub's Prometheus metrics: callbacks, events, request latency, callbacks per transaction,
the delivery queue, delivery attempts, the database pool, refusals not recorded and synthetic
expiries. Only the metric objects (served by `query.health`), so that any layer may count
without importing anything else."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLBACKS = Counter(
    "smsr_callbacks_total", "Provider callbacks by outcome.", ["provider", "outcome"]
)
EVENTS = Counter("smsr_events_total", "New events stored, by status.", ["provider", "status"])
REQUESTS = Histogram(
    "smsr_http_request_duration_seconds",
    "HTTP requests by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
INGEST_BATCHES = Histogram(
    "smsr_ingest_batch_callbacks",
    "Callbacks stored by one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ATTEMPTS = Counter(
    "smsr_delivery_attempts_total", "Webhook delivery attempts by result.", ["result"]
)
QUEUE = Gauge("smsr_delivery_queue", "Deliveries waiting or under way.", ["status"])
POOL = Gauge("smsr_db_pool_connections", "Database pool connections.", ["state"])
REFUSALS_DROPPED = Counter(
    "smsr_callback_refusals_dropped_total",
    "Refused callbacks whose record was not kept (too many waiting to be written).",
)
SYNTHETIC_EXPIRIES = Counter(
    "smsr_synthetic_expiries_total",
    "Recipients given a synthetic `expired` after no final report by their deadline.",
    ["provider"],
)
PROVIDER_DEGRADED = Gauge(
    "smsr_provider_degraded",
    "1 while routing holds a provider degraded for a destination country ('' for every one).",
    ["provider", "country"],
)
SEND_FAILOVERS = Counter(
    "smsr_send_failovers_total",
    "Recipients sent on to the next provider of their route, by the provider left and why.",
    ["provider", "kind"],
)
DISCREPANCIES = Gauge(
    "smsr_message_discrepancies",
    "Messages' reports that contradict them (a summary's counts, a recipient the message never"
    " had), by provider and kind, as kept.",
    ["provider", "kind"],
)
