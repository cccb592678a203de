-- Offsets of usage.events a worker passed without reading them: a hole in the broker's log
-- that did not fill (the embedded broker can lose a batch it assigned offsets to). They are
-- published with the stored marks, so that a producer whose event the broker acknowledged
-- at such an offset sends it again (docs/events.md, "End-to-end acknowledgement").
CREATE TABLE IF NOT EXISTS offset_gaps (
    log_epoch String,
    partition UInt16,
    first_offset UInt64,
    last_offset UInt64,
    at DateTime64(3, 'UTC')
) ENGINE = MergeTree
ORDER BY (log_epoch, partition, first_offset)
TTL toDateTime(at) + INTERVAL 7 DAY;
