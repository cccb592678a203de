"""SQL builders for the operations commands: reconciliation and stored-event look-ups.

Small pure functions returning `(sql, params)`, like `queries.py`; the store only runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from tally.store.queries import Query

MAX_LOOKUP = 10_000  # event ids per stored-events look-up


def epoch_probes(lows: Sequence[int], highs: Sequence[int]) -> Query:
    """Per partition and log epoch with rows in `lows[p] <= offset < highs[p]`: the highest
    such offset and its event id, to compare with the broker's message at that offset."""
    sql = (
        "SELECT partition, log_epoch, max(offset), argMax(event_id, offset) FROM events"
        " WHERE offset >= arrayElement({lows:Array(UInt64)}, partition + 1)"
        " AND offset < arrayElement({highs:Array(UInt64)}, partition + 1)"
        " GROUP BY partition, log_epoch ORDER BY partition, log_epoch"
    )
    return sql, {"lows": list(lows), "highs": list(highs)}


def reconcile_figures(
    start: date,
    end: date,
    org_id: str | None = None,
    epochs: Sequence[Sequence[str]] | None = None,
    lows: Sequence[int] | None = None,
    highs: Sequence[int] | None = None,
) -> Query:
    """Per org, day and line item: rows, distinct event ids, billable quantity and cost.

    Days are the UTC days of the events' `ts`, from `start` to `end` (exclusive). With
    `epochs`, `lows` and `highs` (indexed by partition), only the rows read from offsets
    `lows[p] <= offset < highs[p]` of the epochs `epochs[p]` count: the part a broker scan
    saw (a partition's log may span epochs: a suspected reset starts one on the same log).
    """
    where = ["toDate(ts) >= {start:Date}", "toDate(ts) < {end:Date}"]
    params: dict[str, object] = {"start": start, "end": end}
    if org_id is not None:
        where.append("org_id = {org:String}")
        params["org"] = org_id
    if epochs is not None:
        where += [
            "has(arrayElement({epochs:Array(Array(String))}, partition + 1), log_epoch)",
            "offset >= arrayElement({lows:Array(UInt64)}, partition + 1)",
            "offset < arrayElement({highs:Array(UInt64)}, partition + 1)",
        ]
        params.update(
            epochs=[list(e) for e in epochs], lows=list(lows or []), highs=list(highs or [])
        )
    sql = (
        "SELECT org_id, toDate(ts) AS day, line_item, count(), uniqExact(event_id),"
        " sum(billable), sum(cost_micros) FROM events"
        f" WHERE {' AND '.join(where)}"
        " GROUP BY org_id, day, line_item ORDER BY org_id, day, line_item"
    )
    return sql, params


def stored_event_ids(event_ids: Sequence[str], org_ids: Sequence[str] | None = None) -> Query:
    """Which of these event ids were ever stored (the org ids, if given, narrow the scan).

    `event_ids` keeps the id of every stored event when log retention deletes its row, so a
    re-backfilled old event is known; `events` is read too, for the rows of an insert a
    crash cut short before their `event_ids` rows were written.
    """
    if len(event_ids) > MAX_LOOKUP:
        raise ValueError(f"at most {MAX_LOOKUP} event ids per look-up")
    where = "event_id IN {ids:Array(String)}"
    params: dict[str, object] = {"ids": list(event_ids)}
    if org_ids:
        where = "org_id IN {orgs:Array(String)} AND " + where
        params["orgs"] = list(org_ids)
    sql = (
        f"SELECT DISTINCT event_id FROM (SELECT event_id FROM event_ids WHERE {where}"
        f" UNION ALL SELECT event_id FROM events WHERE {where})"
    )
    return sql, params


def rollup_figures(start: date, end: date, org_id: str | None = None) -> Query:
    """The daily rollup's events, billable quantity and cost per org, day and line item (the
    figures reports, credits and rebuilt counters read)."""
    where = ["day >= {start:Date}", "day < {end:Date}"]
    params: dict[str, object] = {"start": start, "end": end}
    if org_id is not None:
        where.append("org_id = {org:String}")
        params["org"] = org_id
    sql = (
        "SELECT org_id, day, line_item, sum(events), sum(billable), sum(cost_micros)"
        f" FROM usage_daily WHERE {' AND '.join(where)}"
        " GROUP BY org_id, day, line_item ORDER BY org_id, day, line_item"
    )
    return sql, params
