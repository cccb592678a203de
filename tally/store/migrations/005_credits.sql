-- Credit top-ups, one row per top-up request. The first row stored under an org's
-- idempotency key (lowest created_at, then request_id) is the top-up; rows that raced it or
-- retried it under the same key are kept, never merged away, and ignored by every read.
-- Debits are not stored: they are the cost of live usage, read from the exact rollups.
CREATE TABLE IF NOT EXISTS credit_topups (
    org_id String,
    idempotency_key String,
    request_id String,
    amount_micros Int64,
    note String,
    created_at DateTime64(3, 'UTC')
) ENGINE = MergeTree
ORDER BY (org_id, idempotency_key, created_at, request_id);
