-- Orgs and their API keys. Rows are versioned; the latest version of a key wins.
CREATE TABLE IF NOT EXISTS orgs (
    org_id String,
    plan LowCardinality(String),
    signup_date Date,
    created_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY org_id;

CREATE TABLE IF NOT EXISTS api_keys (
    key_id String,
    org_id String,
    mode LowCardinality(String),
    key_hash String,
    created_at DateTime64(3, 'UTC'),
    revoked UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;
