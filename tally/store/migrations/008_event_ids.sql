-- The id of every event ever stored, kept when log retention deletes the event's row from
-- `events`: the worker's dedup window is rebuilt from it, and backfills and DLQ replays ask
-- it whether an event is already stored, so a re-sent, replayed or re-backfilled event is
-- counted once however old its `ts`. Kept as long as the rollups (for good), like them a
-- few tens of bytes per event (docs/analytics.md).
--
-- `day` (the day of the event's `ts`) and `partition` (where it was stored) let the
-- worker's rollup check (`ClickHouseSink.repair`) tell an org's day whose raw events
-- retention deleted from one whose rollups missed events. Partitioned by the month of
-- `ingested_at`, so that the dedup rebuild (the last `TALLY_DEDUP_WINDOW_S` of ingestion)
-- reads a month or two. ReplacingMergeTree: a row copied twice (the backfill below run
-- again) merges away; reads count distinct ids anyway.
--
-- Filled from `events` by a materialized view in the same insert; what `events` held before
-- this migration is copied in by its backfill (tally/store/backfills.py). An insert is not
-- atomic across a table and its views, so readers take the ids of `events` too.
CREATE TABLE IF NOT EXISTS event_ids (
    org_id String,
    event_id String,
    day Date,
    partition UInt16,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (org_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_mv TO event_ids AS
SELECT org_id, event_id, toDate(ts) AS day, partition, ingested_at
FROM events;
