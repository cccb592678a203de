-- The days each live run was active on (a live event with its `run_id` has a `ts` that
-- day): the runs meter (tally/domain/runs.py) is rebuilt from it when a worker loads a
-- partition. Kept when log retention deletes the raw rows, like the rollups; one row of a
-- few tens of bytes per run and day.
--
-- Filled from `events` by a materialized view in the same insert. An insert is not atomic
-- across a table and its views, and what `events` held before this migration is not here:
-- the worker copies the run days of `events` that this table misses when it loads a
-- partition (`ClickHouseSink.load`). ReplacingMergeTree: a row written twice merges away,
-- and readers take distinct days anyway.
CREATE TABLE IF NOT EXISTS run_days (
    org_id String,
    run_id String,
    day Date
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, run_id, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS run_days_mv TO run_days AS
SELECT DISTINCT org_id, run_id, toDate(ts) AS day
FROM events
WHERE key_mode = 'live' AND run_id != '';
