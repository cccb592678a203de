-- Rollups carry the Kafka partition of their events, so that the worker can check and
-- repair one partition's rollups against its raw events (tally/store/queries.py).
-- Daily rollup by org, agent, line item and item (model, connector or storage kind).
-- Rollups deduplicate retried insert blocks like the events table does, so that a retried
-- insert that had in fact succeeded is counted once in both.
CREATE TABLE IF NOT EXISTS usage_daily (
    org_id String,
    day Date,
    agent_id String,
    line_item LowCardinality(String),
    item LowCardinality(String),
    key_mode LowCardinality(String),
    mode LowCardinality(String),
    partition UInt16,
    events UInt64,
    quantity UInt64,
    billable UInt64,
    cost_micros Int64,
    unpriced UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_input_tokens UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, agent_id, line_item, item, key_mode, mode, partition)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
SELECT org_id, toDate(ts) AS day, agent_id, line_item, item, key_mode, mode, partition,
       count() AS events, sum(quantity) AS quantity, sum(billable) AS billable,
       sum(cost_micros) AS cost_micros, sum(1 - priced) AS unpriced,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cached_input_tokens) AS cached_input_tokens
FROM events
GROUP BY org_id, day, agent_id, line_item, item, key_mode, mode, partition;

-- Per-execution rollup: the line items of one run.
CREATE TABLE IF NOT EXISTS usage_runs (
    org_id String,
    run_id String,
    agent_id String,
    line_item LowCardinality(String),
    item LowCardinality(String),
    key_mode LowCardinality(String),
    partition UInt16,
    first_ts SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    events UInt64,
    quantity UInt64,
    billable UInt64,
    cost_micros Int64,
    unpriced UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_input_tokens UInt64
) ENGINE = SummingMergeTree
ORDER BY (org_id, run_id, agent_id, line_item, item, key_mode, partition)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_runs_mv TO usage_runs AS
SELECT org_id, run_id, agent_id, line_item, item, key_mode, partition,
       min(ts) AS first_ts, max(ts) AS last_ts,
       count() AS events, sum(quantity) AS quantity, sum(billable) AS billable,
       sum(cost_micros) AS cost_micros, sum(1 - priced) AS unpriced,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cached_input_tokens) AS cached_input_tokens
FROM events
WHERE run_id != ''
GROUP BY org_id, run_id, agent_id, line_item, item, key_mode, partition;
