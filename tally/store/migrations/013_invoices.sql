-- Invoices, one per org per closed billing period. A row holds the whole invoice (`body`,
-- JSON) and never changes. Several API replicas may close the same period at once: each
-- writes its rows, and every read takes, per (org_id, period_start), the row of the first
-- close stored (lowest created_at, then request_id), like credit top-ups. A close writes all
-- the periods it makes in one insert, so a close wins or loses all of them together.
CREATE TABLE IF NOT EXISTS invoices (
    org_id String,
    period_start DateTime64(3, 'UTC'),
    invoice_id String,
    request_id String,
    created_at DateTime64(3, 'UTC'),
    body String
) ENGINE = MergeTree
ORDER BY (org_id, period_start, created_at, request_id);

-- Status changes an admin makes (open, paid, past_due, void); the newest wins. An invoice
-- without one is open.
CREATE TABLE IF NOT EXISTS invoice_status (
    org_id String,
    invoice_id String,
    status LowCardinality(String),
    at DateTime64(3, 'UTC'),
    request_id String
) ENGINE = MergeTree
ORDER BY (org_id, invoice_id, at, request_id);
