-- usage_runs by day: a run's rows are split by the day of their events' `ts`, so the worker's
-- rollup check (`ClickHouseSink.repair`) compares them with the raw events day by day, as it
-- does usage_daily. A process killed between the views of one insert can leave usage_daily
-- whole and usage_runs short; a check by day finds that, and the repair rebuilds the org's
-- day. Reads group by run as before (the day is one more row key).
--
-- Rows stored before this migration get `day` 1970-01-01; its backfill
-- (tally/store/backfills.py) moves them to the day of their first event, and the rollup check
-- then rebuilds from the raw events the later days of runs that spanned several.
ALTER TABLE usage_runs ADD COLUMN IF NOT EXISTS day Date AFTER run_id,
    MODIFY ORDER BY (org_id, run_id, agent_id, line_item, item, key_mode, partition, day);

ALTER TABLE usage_runs_mv MODIFY QUERY
SELECT org_id, run_id, toDate(ts) AS day, agent_id, line_item, item, key_mode, partition,
       min(ts) AS first_ts, max(ts) AS last_ts,
       count() AS events, sum(quantity) AS quantity, sum(billable) AS billable,
       sum(cost_micros) AS cost_micros, sum(1 - priced) AS unpriced,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cached_input_tokens) AS cached_input_tokens
FROM events
WHERE run_id != ''
GROUP BY org_id, run_id, day, agent_id, line_item, item, key_mode, partition;
