-- Subscriptions, Enterprise overrides and workspace settings. Append-only: every change is
-- kept with the time it was recorded; `seq` orders the changes of an org.

-- Plan and status changes. `plan` is empty for status changes; `status` is empty when the
-- change leaves the status as it is; `effective_at` is later than `recorded_at` when the
-- change is scheduled (a downgrade or a cancellation at the end of the period).
CREATE TABLE IF NOT EXISTS subscription_changes (
    org_id String,
    seq UInt64,
    kind LowCardinality(String),
    recorded_at DateTime64(3, 'UTC'),
    effective_at DateTime64(3, 'UTC'),
    plan String,
    anchor Nullable(Date),
    status LowCardinality(String),
    trial_ends_at Nullable(DateTime64(3, 'UTC'))
) ENGINE = MergeTree
ORDER BY (org_id, seq);

-- Per-org allowances of a custom (Enterprise) plan: a JSON object of the overridden fields.
CREATE TABLE IF NOT EXISTS plan_overrides (
    org_id String,
    seq UInt64,
    recorded_at DateTime64(3, 'UTC'),
    overrides String
) ENGINE = MergeTree
ORDER BY (org_id, seq);

-- Workspace settings an org chooses for itself.
CREATE TABLE IF NOT EXISTS workspace_settings (
    org_id String,
    seq UInt64,
    recorded_at DateTime64(3, 'UTC'),
    default_model Nullable(String)
) ENGINE = MergeTree
ORDER BY (org_id, seq);
