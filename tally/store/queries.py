"""SQL builders: small pure functions returning `(sql, params)`; the store only runs them.

Every value a caller supplies travels as a bound parameter, never inside the SQL text.
"""

from __future__ import annotations

from datetime import date
from typing import Any

Query = tuple[str, dict[str, Any]]


def watermark(log_epoch: str, partition: int) -> Query:
    """Candidates for the next offset to read: from the offsets rows and from the events.

    Each row is `(next_offset, crc, rows_seen)`; a candidate with no rows behind it is no
    mark; `crc` (offsets rows only) is the CRC-32 of the message before the mark.
    """
    sql = (
        "SELECT max(next_offset), argMax(last_crc, next_offset), count() FROM offsets"
        " WHERE log_epoch = {epoch:String} AND partition = {p:UInt16}"
        " UNION ALL"
        " SELECT max(offset) + 1, toUInt32(0), count() FROM events"
        " WHERE log_epoch = {epoch:String} AND partition = {p:UInt16}"
    )
    return sql, {"epoch": log_epoch, "p": partition}


def latest_epoch(base: str, partition: int) -> Query:
    """A partition's most recently written epoch that is `base` or a reset of it
    (`base.<id>`): whichever worker wrote it, the next owner continues it."""
    sql = (
        "SELECT argMax(log_epoch, at) FROM offsets WHERE partition = {p:UInt16}"
        " AND (log_epoch = {base:String} OR startsWith(log_epoch, {prefix:String}))"
        " HAVING count() > 0"
    )
    return sql, {"base": base, "prefix": base + ".", "p": partition}


# A partition's state is rebuilt from the rows of the orgs that map to it under the topic's
# partition count now, wherever the rows were stored: after an increase, an org's history
# follows it to its new partition. `kafkaMurmurHash` is Kafka's default partitioner (the store
# contract checks it against aiokafka's); the stored `partition` is in no sort key, so this
# scans what `partition = p` did.
_OWNED = "kafkaMurmurHash(org_id) % {n:UInt32} = {p:UInt32}"


def daily_counters(partition: int, partitions: int, since: date) -> Query:
    sql = (
        "SELECT org_id, line_item, toUInt32(dateDiff('day', toDate('1970-01-01'), day)) AS d,"
        " sum(billable), sum(cost_micros), sum(unpriced),"
        " sumIf(cost_micros, line_item = 'llm' AND mode = 'managed')"
        f" FROM usage_daily WHERE {_OWNED} AND day >= {{since:Date}}"
        " GROUP BY org_id, line_item, d"
    )
    return sql, {"p": partition, "n": partitions, "since": since}


def minute_counters(partition: int, partitions: int, since_epoch_s: int) -> Query:
    sql = (
        "SELECT org_id, intDiv(toUnixTimestamp(ts), 60) AS m, sum(billable) FROM events"
        f" WHERE {_OWNED} AND line_item = 'requests'"
        " AND ts >= fromUnixTimestamp({since:Int64}) GROUP BY org_id, m"
    )
    return sql, {"p": partition, "n": partitions, "since": since_epoch_s}


def open_sessions(partition: int, partitions: int) -> Query:
    """Live sessions that have started or ended but not both."""
    sql = (
        "SELECT org_id, session_id, max(type = 'session.started') AS s,"
        " max(type = 'session.ended') AS e FROM events"
        f" WHERE {_OWNED} AND key_mode = 'live'"
        " AND type IN ('session.started', 'session.ended')"
        " GROUP BY org_id, session_id HAVING s != e"
    )
    return sql, {"p": partition, "n": partitions}


def recent_event_ids(partition: int, partitions: int, since_epoch_s: int) -> Query:
    """The dedup window: each id the orgs of `partition` stored since `since_epoch_s`, with
    when it was stored (ms), oldest first.

    From `event_ids`, which keeps the ids of the events log retention deleted (an event with
    an old `ts` can go the day it is stored), and from `events`, which holds the rows of an
    insert a crash cut short before its `event_ids` rows were written.
    """
    where = f"{_OWNED} AND ingested_at >= fromUnixTimestamp({{since:Int64}})"
    at = "toUnixTimestamp64Milli(ingested_at) AS at"
    sql = (
        f"SELECT event_id, max(at) AS last FROM (SELECT event_id, {at} FROM event_ids"
        f" WHERE {where} UNION ALL SELECT event_id, {at} FROM events WHERE {where})"
        " GROUP BY event_id ORDER BY last"
    )
    return sql, {"p": partition, "n": partitions, "since": since_epoch_s}


# An events row's event_ids row, as the materialized view in migrations/008_event_ids.sql
# defines it; the migration's backfill copies what events held before it.
EVENT_IDS_SELECT = "SELECT org_id, event_id, toDate(ts) AS day, partition, ingested_at FROM events"
EVENT_IDS_BACKFILL = f"INSERT INTO event_ids {EVENT_IDS_SELECT}"


# The rollups' SELECTs, as the materialized views in migrations/002_rollups.sql define them;
# the worker uses them to rebuild a partition's rollups from its raw events.
_SUMS = (
    "count() AS events, sum(quantity) AS quantity, sum(billable) AS billable,"
    " sum(cost_micros) AS cost_micros, sum(1 - priced) AS unpriced,"
    " sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,"
    " sum(cached_input_tokens) AS cached_input_tokens"
)
DAILY_KEY = "org_id, toDate(ts) AS day, agent_id, line_item, item, key_mode, mode, partition"
RUNS_KEY = "org_id, run_id, agent_id, line_item, item, key_mode, partition"

# The rollups derived from usage_daily (migrations/007_report_rollups.sql): each is
# usage_daily summed over the columns its key leaves out.
DERIVED_KEYS = {
    "usage_daily_items": "org_id, day, line_item, item, key_mode, mode, partition",
    "usage_daily_agents": "org_id, day, agent_id, line_item, key_mode, partition",
}
_RESUMS = (
    "sum(events) AS events, sum(quantity) AS quantity, sum(billable) AS billable,"
    " sum(cost_micros) AS cost_micros, sum(unpriced) AS unpriced,"
    " sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,"
    " sum(cached_input_tokens) AS cached_input_tokens"
)
# Figures compared when checking a derived rollup against usage_daily.
_CHECKED = "tuple(sum(events), sum(quantity), sum(billable), sum(cost_micros), sum(unpriced))"


def derived_select(table: str, where: str) -> str:
    """The SELECT of a derived rollup's materialized view, over the usage_daily rows that
    match `where` (SQL with bound parameters)."""
    key = DERIVED_KEYS[table]
    return f"SELECT {key}, {_RESUMS} FROM usage_daily WHERE {where} GROUP BY {key}"


def derived_month_matches(table: str) -> str:
    """SQL: whether a derived rollup's month (`{month:String}`, a partition id) sums to what
    usage_daily holds for it."""
    return (
        f"SELECT (SELECT {_CHECKED} FROM usage_daily WHERE _partition_id = {{month:String}})"
        f" = (SELECT {_CHECKED} FROM {table} WHERE _partition_id = {{month:String}})"
    )


def rollup_gaps(partition: int) -> Query:
    """Days whose daily rollup disagrees with the raw events of a partition.

    An insert is not atomic across a table and its materialized views: a process killed
    in the middle can leave events without their rollup rows. Only days with more events
    than rollup rows count: fewer means raw events were deleted (retention), and the
    rollups are then the only record left.
    """
    sql = (
        "SELECT e.d FROM"
        " (SELECT toDate(ts) AS d, count() AS n FROM events"
        "  WHERE partition = {p:UInt16} GROUP BY d) AS e"
        " LEFT JOIN"
        " (SELECT day AS d, sum(events) AS n FROM usage_daily"
        "  WHERE partition = {p:UInt16} GROUP BY d) AS r"
        " USING d WHERE e.n > r.n ORDER BY e.d"
    )
    return sql, {"p": partition}


def repair_rollups(partition: int, days: list[date]) -> list[Query]:
    """Statements that rebuild a partition's rollups for `days` from its raw events.

    The derived rollups are emptied for those days too: the re-insert into usage_daily
    reaches them through their materialized views.
    """
    p = {"p": partition, "days": days}
    runs = (
        "SELECT DISTINCT run_id FROM events WHERE partition = {p:UInt16}"
        " AND toDate(ts) IN {days:Array(Date)} AND run_id != ''"
    )
    return [
        *(
            (
                f"ALTER TABLE {table} DELETE WHERE partition = {{p:UInt16}}"
                " AND day IN {days:Array(Date)} SETTINGS mutations_sync = 2",
                p,
            )
            for table in ("usage_daily", *DERIVED_KEYS)
        ),
        (
            f"INSERT INTO usage_daily SELECT {DAILY_KEY}, {_SUMS} FROM events"
            " WHERE partition = {p:UInt16} AND toDate(ts) IN {days:Array(Date)}"
            f" GROUP BY {DAILY_KEY.replace('toDate(ts) AS day', 'day')}"
            " SETTINGS insert_deduplicate = 0",
            p,
        ),
        (
            f"ALTER TABLE usage_runs DELETE WHERE partition = {{p:UInt16}} AND run_id IN ({runs})"
            " SETTINGS mutations_sync = 2",
            p,
        ),
        (
            f"INSERT INTO usage_runs SELECT {RUNS_KEY}, min(ts) AS first_ts, max(ts) AS last_ts,"
            f" {_SUMS} FROM events WHERE partition = {{p:UInt16}} AND run_id IN ({runs})"
            f" GROUP BY {RUNS_KEY} SETTINGS insert_deduplicate = 0",
            p,
        ),
    ]


def derived_gaps(partition: int) -> Query:
    """`(table, day)` for each derived rollup and day whose figures differ from usage_daily's
    for a partition (both are kept forever: any difference is a gap)."""
    daily = (
        f"SELECT day, {_CHECKED} AS f FROM usage_daily WHERE partition = {{p:UInt16}} GROUP BY day"
    )
    parts = [
        f"SELECT '{table}' AS t, day FROM ({daily}) AS d FULL OUTER JOIN"
        f" (SELECT day, {_CHECKED} AS f FROM {table} WHERE partition = {{p:UInt16}}"
        " GROUP BY day) AS r USING day WHERE d.f != r.f"
        for table in DERIVED_KEYS
    ]
    sql = " UNION ALL ".join(parts) + " ORDER BY t, day"
    return sql, {"p": partition}


def rebuild_derived(table: str, partition: int, days: list[date]) -> list[Query]:
    """Statements that rebuild a derived rollup for a partition's `days` from usage_daily."""
    p = {"p": partition, "days": days}
    where = "partition = {p:UInt16} AND day IN {days:Array(Date)}"
    return [
        (f"ALTER TABLE {table} DELETE WHERE {where} SETTINGS mutations_sync = 2", p),
        (
            f"INSERT INTO {table} {derived_select(table, where)} SETTINGS insert_deduplicate = 0",
            p,
        ),
    ]
