-- Admission decisions and settlements, decided by the worker that owns the org in log order
-- (tally.domain.reservations). Stored with the batch that read them; a rebuilt worker takes
-- back the reservations held below the stored mark. `state`: held, refused or settled.
CREATE TABLE IF NOT EXISTS reservations (
    org_id String,
    reservation_id String,
    meter LowCardinality(String),
    amount UInt64,
    `limit` UInt64,
    used UInt64,
    state LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    partition UInt16,
    offset UInt64,
    log_epoch String,
    at DateTime64(3, 'UTC')
) ENGINE = MergeTree
ORDER BY (org_id, reservation_id)
TTL toDateTime(at) + INTERVAL 40 DAY;
