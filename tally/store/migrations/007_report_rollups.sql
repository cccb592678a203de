-- Coarser daily rollups for the reports, each the daily rollup summed over what it leaves
-- out: per item without the agent (breakdowns by day, line item, item, key mode or mode,
-- and the daily series), per agent without the item and the LLM mode (breakdowns by agent
-- or for one agent). A report query costs about the same whatever it reads up to a few
-- thousand rows, and these hold 7 and 3 times fewer rows per org than usage_daily
-- (docs/benchmarks.md). The query builder (tally/store/reports.py) picks the smallest
-- that has every column a report needs.
--
-- They are filled from usage_daily, by materialized views on it: whatever reaches
-- usage_daily (the worker's inserts through usage_daily_mv, a repair's re-insert) reaches
-- them in the same insert. What usage_daily held before this migration is copied in by its
-- backfill (tally/store/backfills.py), month by month, replacing each month whole, so that
-- running it again or from several processes at once changes nothing. The worker checks
-- them against usage_daily when it loads a partition and rebuilds the days that disagree
-- (a process killed between the inserts of one batch), like usage_daily against events.
CREATE TABLE IF NOT EXISTS usage_daily_items (
    org_id String,
    day Date,
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
ORDER BY (org_id, day, line_item, item, key_mode, mode, partition)
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_items_mv TO usage_daily_items AS
SELECT org_id, day, line_item, item, key_mode, mode, partition,
       sum(events) AS events, sum(quantity) AS quantity, sum(billable) AS billable,
       sum(cost_micros) AS cost_micros, sum(unpriced) AS unpriced,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cached_input_tokens) AS cached_input_tokens
FROM usage_daily
GROUP BY org_id, day, line_item, item, key_mode, mode, partition;

CREATE TABLE IF NOT EXISTS usage_daily_agents (
    org_id String,
    day Date,
    agent_id String,
    line_item LowCardinality(String),
    key_mode LowCardinality(String),
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
ORDER BY (org_id, day, agent_id, line_item, key_mode, partition)
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_agents_mv TO usage_daily_agents AS
SELECT org_id, day, agent_id, line_item, key_mode, partition,
       sum(events) AS events, sum(quantity) AS quantity, sum(billable) AS billable,
       sum(cost_micros) AS cost_micros, sum(unpriced) AS unpriced,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cached_input_tokens) AS cached_input_tokens
FROM usage_daily
GROUP BY org_id, day, agent_id, line_item, key_mode, partition;
