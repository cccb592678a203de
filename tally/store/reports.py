"""SQL builders for usage reports and credits: pure functions returning `(sql, params)`.

They read the rollups (`usage_daily` and the ones derived from it, `usage_runs`) with
`GROUP BY` and `sum()`, never trusting that SummingMergeTree has merged. Every value a
caller supplies is a bound parameter; the only words spliced into the SQL come from the
fixed tables below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta

from tally.domain.reports import GROUPS, METRICS, DayRange
from tally.store.queries import Query

# Group name -> column of usage_daily. Users pick names; only these columns reach the SQL.
GROUP_COLUMNS = {
    "day": "day",
    "agent": "agent_id",
    "line_item": "line_item",
    "item": "item",
    "key_mode": "key_mode",
    "mode": "mode",
}
assert tuple(GROUP_COLUMNS) == GROUPS

# The daily rollups a breakdown can read, smallest first, with the columns each keeps
# (migrations/007_report_rollups.sql): a breakdown reads the first that has every column it
# groups or filters by. Each is usage_daily summed over the columns it leaves out, so all
# give the same figures; the smaller ones hold 3 to 7 times fewer rows per org.
ROLLUPS = (
    ("usage_daily_items", frozenset({"day", "line_item", "item", "key_mode", "mode"})),
    ("usage_daily_agents", frozenset({"day", "agent_id", "line_item", "key_mode"})),
    ("usage_daily", frozenset(GROUP_COLUMNS.values())),
)


def rollup_for(columns: Iterable[str]) -> str:
    """The smallest daily rollup with `columns` (and the day, key mode and line item that
    every breakdown reads)."""
    need = {"day", "key_mode", "line_item", *columns}
    return next(table for table, has in ROLLUPS if need <= has)


# One expression per figure, in the order of METRICS; valid on every daily rollup and on
# usage_runs.
METRIC_SQL = {
    "events": "sum(events)",
    "tokens": "sumIf(quantity, line_item = 'llm')",
    "input_tokens": "sum(input_tokens)",
    "output_tokens": "sum(output_tokens)",
    "cached_input_tokens": "sum(cached_input_tokens)",
    "tool_calls": "sumIf(quantity, line_item = 'tool_calls')",
    "billable_tool_calls": "sumIf(billable, line_item = 'tool_calls')",
    "requests": "sumIf(quantity, line_item = 'requests')",
    "storage_byte_seconds": "sumIf(quantity, line_item = 'storage')",
    "cost_micros": "sum(cost_micros)",
    "unpriced": "sum(unpriced)",
}
assert tuple(METRIC_SQL) == METRICS
_FIGURES = ", ".join(f"toInt64({METRIC_SQL[m]}) AS {m}" for m in METRICS)


def breakdown(
    org_id: str,
    span: DayRange,
    groups: Sequence[str],
    key_modes: Sequence[str],
    agent_id: str | None = None,
    line_item: str | None = None,
    limit: int | None = None,
) -> Query:
    """Figures per group over `span`; no groups gives one row, the total.

    Rows are `(*group values, *METRICS)`, ordered by the group columns.
    """
    unknown = [g for g in groups if g not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r}")
    columns = [GROUP_COLUMNS[g] for g in groups]
    params: dict[str, object] = {
        "org": org_id,
        "start": span.start,
        "end": span.end,
        "modes": list(key_modes),
    }
    where = [
        "org_id = {org:String}",
        "day >= {start:Date}",
        "day < {end:Date}",
        "has({modes:Array(String)}, key_mode)",
    ]
    if agent_id is not None:
        where.append("agent_id = {agent:String}")
        params["agent"] = agent_id
    if line_item is not None:
        where.append("line_item = {line_item:String}")
        params["line_item"] = line_item
    select = ", ".join([*(f"{c} AS g_{c}" for c in columns), _FIGURES])
    table = rollup_for([*columns, *(["agent_id"] if agent_id is not None else [])])
    sql = f"SELECT {select} FROM {table} WHERE {' AND '.join(where)}"
    if columns:
        keys = ", ".join(f"g_{c}" for c in columns)
        sql += f" GROUP BY {keys} ORDER BY {keys}"
    if limit is not None:
        sql += " LIMIT {limit:UInt32}"
        params["limit"] = limit
    return sql, params


def run_line_items(org_id: str, run_id: str) -> Query:
    """One execution's line items: `(agent_id, line_item, item, key_mode, first_ts, last_ts,
    events, quantity, billable, cost_micros, unpriced, input, output, cached)`."""
    sql = (
        "SELECT agent_id, line_item, item, key_mode, min(first_ts), max(last_ts),"
        " toInt64(sum(events)), toInt64(sum(quantity)), toInt64(sum(billable)),"
        " toInt64(sum(cost_micros)), toInt64(sum(unpriced)), toInt64(sum(input_tokens)),"
        " toInt64(sum(output_tokens)), toInt64(sum(cached_input_tokens))"
        " FROM usage_runs WHERE org_id = {org:String} AND run_id = {run:String}"
        " GROUP BY agent_id, line_item, item, key_mode"
        " ORDER BY line_item, item, agent_id, key_mode"
    )
    return sql, {"org": org_id, "run": run_id}


def agent_runs(
    org_id: str, agent_id: str, span: DayRange, key_modes: Sequence[str], limit: int
) -> Query:
    """Runs of an agent that started in `span`, newest first:
    `(run_id, first_ts, last_ts, *METRICS)`."""
    sql = (
        f"SELECT run_id, min(first_ts) AS started, max(last_ts) AS ended, {_FIGURES}"
        " FROM usage_runs"
        " WHERE org_id = {org:String} AND agent_id = {agent:String}"
        " AND has({modes:Array(String)}, key_mode)"
        " GROUP BY run_id"
        " HAVING toDate(started) >= {start:Date} AND toDate(started) < {end:Date}"
        " ORDER BY started DESC, run_id LIMIT {limit:UInt32}"
    )
    params = {
        "org": org_id,
        "agent": agent_id,
        "modes": list(key_modes),
        "start": span.start,
        "end": span.end,
        "limit": limit,
    }
    return sql, params


def credit_topups(org_id: str) -> Query:
    """Each applied top-up of an org once, oldest first: the first row stored under an
    idempotency key wins, whatever raced or was retried after it.
    `(idempotency_key, amount_micros, note, created_at, request_id)`."""
    sql = (
        "SELECT idempotency_key, argMin(amount_micros, (created_at, request_id)),"
        " argMin(note, (created_at, request_id)), min(created_at),"
        " argMin(request_id, (created_at, request_id))"
        " FROM credit_topups WHERE org_id = {org:String}"
        " GROUP BY idempotency_key ORDER BY min(created_at), idempotency_key"
    )
    return sql, {"org": org_id}


def credit_topup(org_id: str, idempotency_key: str) -> Query:
    """The winning row under one idempotency key, if any (same columns as credit_topups)."""
    sql = (
        "SELECT idempotency_key, argMin(amount_micros, (created_at, request_id)),"
        " argMin(note, (created_at, request_id)), min(created_at),"
        " argMin(request_id, (created_at, request_id))"
        " FROM credit_topups WHERE org_id = {org:String} AND idempotency_key = {key:String}"
        " GROUP BY idempotency_key"
    )
    return sql, {"org": org_id, "key": idempotency_key}


def live_cost_by_day_since(org_id: str, started_at: datetime, first_full_day: date) -> Query:
    """Cost of live usage per UTC day from `started_at` on: `(day, cost_micros)`.

    The part of the first day from `started_at` comes from the events (exact to the
    millisecond), every later day from the daily rollup. `first_full_day` is the day after
    `started_at`'s.
    """
    sql = (
        "SELECT day, toInt64(sum(cost)) FROM ("
        " SELECT toDate(ts) AS day, cost_micros AS cost FROM events"
        " WHERE org_id = {org:String} AND key_mode = 'live'"
        " AND ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
        " AND ts < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')"
        " UNION ALL"
        " SELECT day, cost_micros AS cost FROM usage_daily"
        " WHERE org_id = {org:String} AND key_mode = 'live' AND day >= {first_full_day:Date}"
        ") GROUP BY day ORDER BY day"
    )
    params = {
        "org": org_id,
        "since_ms": epoch_ms(started_at),
        "until_ms": epoch_ms(datetime.combine(first_full_day, time(), UTC)),
        "first_full_day": first_full_day,
    }
    return sql, params


def epoch_ms(t: datetime) -> int:
    """Milliseconds since the Unix epoch, in integers (no float rounding)."""
    return (t - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
