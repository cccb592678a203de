"""SQL for the call log: one page of an org's raw events, newest first (`tally.domain.calllog`).

Pure: returns `(sql, params)`; every value is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from tally.domain.calllog import Cursor, Span, Status, epoch_ms
from tally.store.queries import Query

COLUMNS = (
    "event_id",
    "type",
    "ts",
    "agent_id",
    "run_id",
    "session_id",
    "key_mode",
    "line_item",
    "item",
    "quantity",
    "billable",
    "cost_micros",
    "priced",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "mode",
    "tool",
    "success",
    "cache_hit",
)

_FAILED = "(type = 'tool.call' AND success = 0)"


@dataclass(frozen=True, slots=True)
class Filters:
    type: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    status: Status | None = None


def page(org_id: str, span: Span, filters: Filters, cursor: Cursor, limit: int) -> Query:
    """Up to `limit` events of `org_id` below the cursor's position, stored by its `as_of`.

    `ts <= {ts}` beside the tuple comparison lets the primary key (org_id, ts, event_id)
    skip what lies above the position; `LIMIT 1 BY` keeps one row per event should the
    table ever hold a row twice.
    """
    where = [
        "org_id = {org:String}",
        "ingested_at <= fromUnixTimestamp64Milli({as_of:Int64}, 'UTC')",
        "ts <= fromUnixTimestamp64Milli({ts:Int64}, 'UTC')",
        "(ts, event_id) < (fromUnixTimestamp64Milli({ts:Int64}, 'UTC'), {eid:String})",
    ]
    params: dict[str, object] = {
        "org": org_id,
        "as_of": cursor.as_of_ms,
        "ts": cursor.ts_ms,
        "eid": cursor.event_id,
        "limit": limit,
    }
    if span.start is not None:
        where.append("ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')")
        params["start"] = epoch_ms(span.start)
    if span.end is not None:
        where.append("ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC')")
        params["end"] = epoch_ms(span.end)
    for column in ("type", "agent_id", "run_id"):
        value = getattr(filters, column)
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    if filters.status is not None:
        where.append(_FAILED if filters.status == "failed" else f"NOT {_FAILED}")
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM events WHERE {' AND '.join(where)}"
        " ORDER BY ts DESC, event_id DESC LIMIT 1 BY ts, event_id LIMIT {limit:UInt32}"
    )
    return sql, params
