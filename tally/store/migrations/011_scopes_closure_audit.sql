-- Key scopes: what an org key may do. Keys issued before scopes existed get every scope, so
-- they keep working as before.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS scopes Array(LowCardinality(String))
    DEFAULT ['events:write', 'quota:read', 'usage:read', 'billing:read', 'sessions:write'];

-- A closed org: its keys and events are refused from `closed_at`; its data is purged once
-- the grace period (TALLY_CLOSURE_GRACE_DAYS) has passed, unless it is restored first (a
-- newer version with `closed_at` NULL).
ALTER TABLE orgs ADD COLUMN IF NOT EXISTS closed_at Nullable(DateTime64(3, 'UTC'));

-- The audit trail: every admin action, appended, never changed. `before` and `after` are
-- JSON documents of the state the action changed. It holds no usage data and is kept when
-- an org's data is purged (its `org.purged` entry says when and by whom).
CREATE TABLE IF NOT EXISTS audit_log (
    at DateTime64(6, 'UTC'),
    actor String,
    action LowCardinality(String),
    org_id String,
    before String,
    after String,
    entry_id String
) ENGINE = MergeTree
ORDER BY (at, org_id, entry_id);
