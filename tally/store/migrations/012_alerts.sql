-- Alerts: rules, what fired, webhook endpoints and their durable outbox.

-- An org's own alert rules: the newest seq is in force (a JSON list of rules).
CREATE TABLE IF NOT EXISTS alert_rules (
    org_id String,
    seq UInt64,
    recorded_at DateTime64(3, 'UTC'),
    rules String
) ENGINE = MergeTree
ORDER BY (org_id, seq);

-- What fired. `alert_id` is a function of (org, type, rule, scope, window, threshold): a
-- crossing evaluated twice (a restart, two API replicas) is one row after merging, and every
-- read takes it once (FINAL). `published` turns 1 once it is on the usage.alerts topic.
CREATE TABLE IF NOT EXISTS alerts (
    org_id String,
    alert_id String,
    type LowCardinality(String),
    at DateTime64(3, 'UTC'),
    rule String,
    meter LowCardinality(String),
    scope String,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    threshold Int64,
    limit_value Nullable(Int64),
    used Int64,
    published UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (org_id, alert_id);

-- Webhook endpoints; the newest version of each wins. `state`: enabled, disabled, deleted.
-- The signing secret must be readable to sign with, so it is kept as is (API keys are hashed).
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    org_id String,
    endpoint_id String,
    url String,
    events Array(String),
    secret String,
    state LowCardinality(String),
    failing_since Nullable(DateTime64(3, 'UTC')),
    created_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (org_id, endpoint_id);

-- The outbox: one row per (endpoint, message), written before the alert is stored, and a
-- newer version after each attempt. A message written again (a restart before its alert was
-- stored) comes back at version 0 and never hides what its attempts wrote.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    org_id String,
    endpoint_id String,
    msg_id String,
    type LowCardinality(String),
    payload String,
    created_at DateTime64(3, 'UTC'),
    status LowCardinality(String),
    attempts UInt32,
    first_attempt_at Nullable(DateTime64(3, 'UTC')),
    next_attempt_at Nullable(DateTime64(3, 'UTC')),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (org_id, endpoint_id, msg_id);

-- Every attempt, for the delivery log.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    org_id String,
    endpoint_id String,
    msg_id String,
    attempt UInt32,
    at DateTime64(3, 'UTC'),
    status_code Nullable(UInt16),
    error String
) ENGINE = MergeTree
ORDER BY (org_id, endpoint_id, msg_id, attempt);
