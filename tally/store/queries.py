"""SQL builders: small pure functions returning `(sql, params)`; the store only runs them.

Every value a caller supplies travels as a bound parameter, never inside the SQL text.
"""

from __future__ import annotations

from datetime import date, datetime
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


_RUN_DAY = "toUInt32(dateDiff('day', toDate('1970-01-01'), day))"


def copy_run_days(partition: int, partitions: int, since: date) -> Query:
    """Copy into `run_days` the live run days of `events` it misses (an insert a crash cut
    short between the table and its view, or events stored before the table existed)."""
    of_events = (
        "SELECT DISTINCT org_id, run_id, toDate(ts) AS day FROM events"
        f" WHERE {_OWNED} AND key_mode = 'live' AND run_id != ''"
        " AND ts >= toDateTime64({since:Date}, 3, 'UTC')"
    )
    sql = (
        f"INSERT INTO run_days SELECT org_id, run_id, day FROM ({of_events})"
        " WHERE (org_id, run_id, day) NOT IN (SELECT org_id, run_id, day FROM run_days"
        f" WHERE {_OWNED} AND day >= {{since:Date}})"
    )
    return sql, {"p": partition, "n": partitions, "since": since}


def run_days(partition: int, partitions: int, since: date) -> Query:
    """The live runs of the orgs of `partition` active since `since`: `(org_id, run_id,
    days)`, the days (since 1970-01-01) in order."""
    sql = (
        f"SELECT org_id, run_id, arraySort(groupUniqArray({_RUN_DAY})) FROM run_days"
        f" WHERE {_OWNED} AND day >= {{since:Date}} GROUP BY org_id, run_id"
    )
    return sql, {"p": partition, "n": partitions, "since": since}


def run_counted(org_id: str, run_id: str, start: datetime, end: datetime) -> Query:
    """Whether a live run of `org_id` has an event in [start, end): one row if it has."""
    sql = (
        "SELECT 1 FROM run_days WHERE org_id = {org:String} AND run_id = {run:String}"
        " AND day >= toDate({start:DateTime64(3, 'UTC')})"
        " AND day < toDate({end:DateTime64(3, 'UTC')}) LIMIT 1"
    )
    return sql, {"org": org_id, "run": run_id, "start": start, "end": end}


def open_sessions(partition: int, partitions: int) -> Query:
    """Live sessions that have started or ended but not both: `(org_id, session_id,
    started, ended, last_seen, agent_id, run_id)`, the lease's last activity (the latest
    event time of the session's live events other than ends) and where it started."""
    sessions = (
        "SELECT org_id, session_id FROM events"
        f" WHERE {_OWNED} AND key_mode = 'live'"
        " AND type IN ('session.started', 'session.ended')"
        " GROUP BY org_id, session_id"
        " HAVING max(type = 'session.started') != max(type = 'session.ended')"
    )
    sql = (
        "SELECT org_id, session_id, max(type = 'session.started') AS s,"
        " max(type = 'session.ended') AS e, maxIf(ts, type != 'session.ended'),"
        " argMinIf(agent_id, ts, type = 'session.started'),"
        " argMinIf(run_id, ts, type = 'session.started') FROM events"
        f" WHERE {_OWNED} AND key_mode = 'live' AND session_id != ''"
        f" AND (org_id, session_id) IN ({sessions})"
        " GROUP BY org_id, session_id"
    )
    return sql, {"p": partition, "n": partitions}


def live_sessions(org_id: str) -> Query:
    """An org's live sessions, oldest first: `(session_id, agent_id, run_id, started_at,
    last_seen_at)`, as the worker's leases have them (tally.domain.leases)."""
    sql = (
        "SELECT session_id, argMinIf(agent_id, ts, type = 'session.started'),"
        " argMinIf(run_id, ts, type = 'session.started'),"
        " minIf(ts, type = 'session.started') AS started, maxIf(ts, type != 'session.ended')"
        " FROM events WHERE org_id = {org:String} AND key_mode = 'live' AND session_id != ''"
        " AND session_id IN (SELECT session_id FROM events WHERE org_id = {org:String}"
        " AND key_mode = 'live' AND type IN ('session.started', 'session.ended')"
        " GROUP BY session_id HAVING max(type = 'session.started') = 1"
        " AND max(type = 'session.ended') = 0)"
        " GROUP BY session_id ORDER BY started, session_id"
    )
    return sql, {"org": org_id}


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
RUNS_KEY = "org_id, run_id, toDate(ts) AS day, agent_id, line_item, item, key_mode, partition"

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


_RUN = "org_id, run_id, agent_id, line_item, item, key_mode, partition"
_RUN_FIGURES = (
    "events",
    "quantity",
    "billable",
    "cost_micros",
    "unpriced",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
)
_RUN_ROW = "org_id, run_id, day, agent_id, line_item, item, key_mode, partition, first_ts, last_ts"
# usage_runs as migration 015 wants it: dated rows as they are; each undated row (stored
# before rows had a day) as its raw events by day, plus what they no longer hold (deleted by
# retention: the oldest days) on the day of its first event.
RUNS_BY_DAY_BACKFILL = (
    f"SELECT {_RUN_ROW}, {', '.join(_RUN_FIGURES)} FROM ("
    f" SELECT {_RUN_ROW}, {', '.join(_RUN_FIGURES)} FROM usage_runs WHERE day != toDate(0)"
    " UNION ALL"
    f" SELECT {RUNS_KEY}, min(ts) AS first_ts, max(ts) AS last_ts, {_SUMS} FROM events"
    f" WHERE run_id != '' AND ({_RUN}) IN (SELECT {_RUN} FROM usage_runs WHERE day = toDate(0))"
    f" GROUP BY {RUNS_KEY.replace('toDate(ts) AS day', 'day')}"
    " UNION ALL"
    " SELECT org_id, run_id, toDate(r.first_ts) AS day, agent_id, line_item, item, key_mode,"
    " partition, r.first_ts AS first_ts, r.last_ts AS last_ts, "
    + ", ".join(
        f"toInt64(r.{f}) - toInt64(e.{f}) AS {f}"
        if f == "cost_micros"
        else f"toUInt64(greatest(toInt64(r.{f}) - toInt64(e.{f}), 0)) AS {f}"
        for f in _RUN_FIGURES
    )
    + f" FROM (SELECT {_RUN}, min(first_ts) AS first_ts, max(last_ts) AS last_ts, "
    + ", ".join(f"sum({f}) AS {f}" for f in _RUN_FIGURES)
    + f" FROM usage_runs WHERE day = toDate(0) GROUP BY {_RUN}) AS r"
    f" LEFT JOIN (SELECT {_RUN}, {_SUMS} FROM events WHERE run_id != '' GROUP BY {_RUN}) AS e"
    f" USING ({_RUN})"
    ") SETTINGS insert_deduplicate = 0"
)


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
    """Days whose rollups hold fewer events than the raw events of a partition: usage_daily
    fewer than all of them, or usage_runs fewer than those that name a run.

    An insert is not atomic across a table and its materialized views: a process killed
    in the middle can leave events without their rollup rows, in either rollup. Only more
    raw events than rollup events is a gap: fewer means raw events were deleted (retention),
    and the rollups are then the only record left. A first look, by day (a scan of the
    partition's events at every load); `org_gaps` then finds the orgs.
    """
    return _short_days("", "partition = {p:UInt16}"), {"p": partition}


def org_gaps(partition: int, days: list[date]) -> Query:
    """`(org_id, day)` on `days` where an org's rollups on a partition hold fewer events than
    its raw events. By org: orgs of one partition have different retentions, and one org's
    deleted events must not be rebuilt away with another's gap."""
    where = "partition = {p:UInt16} AND {day} IN {days:Array(Date)}"
    return _short_days("org_id", where), {"p": partition, "days": days}


def _short_days(key: str, where: str) -> str:
    """SQL: the `(key, d)` whose rollups are short of the raw events (`where` may name the
    day as `{day}`): usage_daily of all of them, usage_runs of those naming a run."""
    k = f"{key}, " if key else ""
    raw_day, rollup_day = "toDate(ts)", "day"
    using = f"({key}, d)" if key else "d"

    def on(day: str) -> str:
        return where.replace("{day}", day)

    return (
        f"SELECT {k.replace('org_id', 'e.org_id')}e.d FROM"
        f" (SELECT {k}{raw_day} AS d, count() AS n, countIf(run_id != '') AS nr FROM events"
        f"  WHERE {on(raw_day)} GROUP BY {k}d) AS e"
        f" LEFT JOIN (SELECT {k}{rollup_day} AS d, sum(events) AS daily FROM usage_daily"
        f"  WHERE {on(rollup_day)} GROUP BY {k}d) AS r USING {using}"
        f" LEFT JOIN (SELECT {k}{rollup_day} AS d, sum(events) AS runs FROM usage_runs"
        f"  WHERE {on(rollup_day)} GROUP BY {k}d) AS u USING {using}"
        f" WHERE e.n > r.daily OR e.nr > u.runs ORDER BY e.d{', e.org_id' if key else ''}"
    )


def _on_org_days(day: str) -> str:
    """SQL: the row is on one of the org-days `(orgs[i], days[i])`; `day` is its day."""
    return (
        "org_id IN {orgs:Array(String)}"
        f" AND has(arrayZip({{orgs:Array(String)}}, {{days:Array(Date)}}), (org_id, {day}))"
    )


def _org_days(org_days: list[tuple[str, date]]) -> dict[str, Any]:
    return {"orgs": [org for org, _ in org_days], "days": [day for _, day in org_days]}


def deleted_days(partition: int, orgs: list[str], first: date, last: date) -> Query:
    """`(org_id, day)` from `first` to `last` on which retention deleted raw events of
    `orgs` stored on a partition: `event_ids`, which it does not delete, holds more of them
    than `events` (days by the events' `ts`)."""
    sql = (
        "SELECT i.org_id, i.day FROM"
        " (SELECT org_id, day, uniqExact(event_id) AS n FROM event_ids"
        "  WHERE partition = {p:UInt16} AND org_id IN {orgs:Array(String)}"
        "  AND day >= {first:Date} AND day <= {last:Date} GROUP BY org_id, day) AS i"
        " LEFT JOIN"
        " (SELECT org_id, toDate(ts) AS day, count() AS n FROM events"
        "  WHERE partition = {p:UInt16} AND org_id IN {orgs:Array(String)}"
        "  AND toDate(ts) >= {first:Date} AND toDate(ts) <= {last:Date}"
        "  GROUP BY org_id, day) AS e"
        " USING (org_id, day) WHERE i.n > e.n ORDER BY i.org_id, i.day"
    )
    return sql, {"p": partition, "orgs": orgs, "first": first, "last": last}


def repair_rollups(partition: int, org_days: list[tuple[str, date]]) -> list[Query]:
    """Statements that rebuild a partition's rollups of the org-days `(org_id, day)` from its
    raw events: usage_daily and usage_runs.

    The derived rollups are emptied for those org-days too: the re-insert into usage_daily
    reaches them through their materialized views.
    """
    if not org_days:
        return []
    p = {"p": partition, **_org_days(org_days)}
    where = f"partition = {{p:UInt16}} AND {_on_org_days('day')}"
    raw = f"partition = {{p:UInt16}} AND {_on_org_days('toDate(ts)')}"
    return [
        *(
            (f"ALTER TABLE {table} DELETE WHERE {where} SETTINGS mutations_sync = 2", p)
            for table in ("usage_daily", *DERIVED_KEYS, "usage_runs")
        ),
        (
            f"INSERT INTO usage_daily SELECT {DAILY_KEY}, {_SUMS} FROM events WHERE {raw}"
            f" GROUP BY {DAILY_KEY.replace('toDate(ts) AS day', 'day')}"
            " SETTINGS insert_deduplicate = 0",
            p,
        ),
        (
            f"INSERT INTO usage_runs SELECT {RUNS_KEY}, min(ts) AS first_ts,"
            f" max(ts) AS last_ts, {_SUMS} FROM events WHERE {raw} AND run_id != ''"
            f" GROUP BY {RUNS_KEY.replace('toDate(ts) AS day', 'day')}"
            " SETTINGS insert_deduplicate = 0",
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


def offset_gaps(log_epoch: str, partition: int, limit: int) -> Query:
    """The latest gaps a worker passed in a partition's log (`offset_gaps`), oldest first."""
    sql = (
        "SELECT first_offset, last_offset FROM offset_gaps"
        " WHERE log_epoch = {epoch:String} AND partition = {p:UInt16}"
        " ORDER BY first_offset DESC LIMIT {n:UInt32}"
    )
    return sql, {"epoch": log_epoch, "p": partition, "n": limit}


# The reservation rows a rebuild takes: those of a log before this one, and those of this
# log below the stored mark (a batch read again decides again).
_DECIDED = f"{_OWNED} AND (log_epoch != {{epoch:String}} OR offset < {{next:UInt64}})"


def held_reservations(partition: int, partitions: int, epoch: str, next_offset: int) -> Query:
    """`(org_id, reservation_id, meter, amount, expires_at)` of every reservation held and
    not settled (lapsed ones too: the org's clock judges them)."""
    sql = (
        "SELECT org_id, reservation_id, argMaxIf(meter, at, state = 'held'),"
        " argMaxIf(amount, at, state = 'held'), argMaxIf(expires_at, at, state = 'held')"
        " FROM reservations"
        f" WHERE {_DECIDED} GROUP BY org_id, reservation_id"
        # The latest decision counts: a batch stored after a crash decides again.
        " HAVING argMaxIf(state, at, state != 'settled') = 'held'"
        " AND NOT max(state = 'settled')"
    )
    return sql, {"p": partition, "n": partitions, "epoch": epoch, "next": next_offset}


def org_clocks(partition: int, partitions: int, epoch: str, next_offset: int) -> Query:
    """`(org_id, clock)`: each org's latest admission request time, as decided."""
    sql = (
        "SELECT org_id, max(ts) FROM reservations"
        f" WHERE {_DECIDED} AND state != 'settled' GROUP BY org_id"
    )
    return sql, {"p": partition, "n": partitions, "epoch": epoch, "next": next_offset}


def admission_decision(org_id: str, reservation_id: str) -> Query:
    """`(state, used, expires_at)` of a reservation's latest decision (`held`/`refused`)."""
    sql = (
        "SELECT argMax(state, at), argMax(used, at), argMax(expires_at, at) FROM reservations"
        " WHERE org_id = {org:String} AND reservation_id = {rid:String}"
        " AND state != 'settled' HAVING count() > 0"
    )
    return sql, {"org": org_id, "rid": reservation_id}
