-- Raw events, one row per accepted event, with the Kafka position it came from.
CREATE TABLE IF NOT EXISTS events (
    org_id String,
    event_id String,
    type LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    agent_id String,
    run_id String,
    session_id String,
    key_mode LowCardinality(String),
    line_item LowCardinality(String),
    item LowCardinality(String),
    quantity UInt64,
    billable UInt64,
    cost_micros Int64,
    priced UInt8,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_input_tokens UInt64,
    mode LowCardinality(String),
    tool String,
    success UInt8,
    cache_hit UInt8,
    partition UInt16,
    offset UInt64,
    ingested_at DateTime64(3, 'UTC'),
    log_epoch LowCardinality(String)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (org_id, ts, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Where each partition of usage.events has been applied up to (next offset to read).
CREATE TABLE IF NOT EXISTS offsets (
    log_epoch String,
    partition UInt16,
    next_offset UInt64,
    at DateTime64(3, 'UTC')
) ENGINE = MergeTree
ORDER BY (log_epoch, partition, next_offset);
