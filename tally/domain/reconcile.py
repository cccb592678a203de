"""Reconciliation arithmetic: the same figures from three sources, and where they differ.

A *figure table* maps `(org_id, day)` to named integer figures:
  events                  distinct events (by event_id)
  rows                    stored rows (the store only: rows above events are double counts)
  tokens, tool_calls, requests, storage   live billable quantity (the counters' meters)
  cost.llm, cost.tool_calls, cost.storage cost in micro-units

Two comparisons are made, each over what both sides can see:
  broker -> store     the events a broker scan read against the rows stored from those very
                      offsets (events, meters, cost); plus stored rows counted twice
  store -> rollups    every stored row against the daily rollup that reports, credits and
                      rebuilt counters read (events, meters, cost)
  store -> counters   every stored row of the day against the quota counters (meters, cost),
                      for the days the counters still keep
  rollups -> counters on the days an org's plan retention has deleted its raw events (the
                      rollups stay and are the record there), instead of all of the above
No I/O: the operations command gathers the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

from tally.domain.counters import COST_PREFIX, METER_OF_LINE_ITEM
from tally.domain.usage import Usage

Figures = dict[str, int]
Table = dict[tuple[str, date], Figures]

METERS = tuple(METER_OF_LINE_ITEM.values())
COSTS = tuple(COST_PREFIX + li for li in ("llm", "tool_calls", "storage"))
MONEY_AND_METERS = METERS + COSTS

Check = Literal["broker/store", "store/rollups", "store/counters", "rollups/counters", "duplicates"]


@dataclass(frozen=True, slots=True)
class Difference:
    org_id: str
    day: date
    figure: str
    check: Check
    expected: int  # the upstream side: broker for broker/store, store for store/counters
    found: int

    @property
    def delta(self) -> int:
        return self.found - self.expected


def add_usage(table: Table, org_id: str, day: date, usage: Usage) -> None:
    """Count one distinct event the way the worker counts it."""
    figures = table.setdefault((org_id, day), {})
    figures["events"] = figures.get("events", 0) + 1
    meter = METER_OF_LINE_ITEM.get(usage.line_item)
    if meter is not None and usage.billable:
        figures[meter] = figures.get(meter, 0) + usage.billable
    if meter is not None and usage.cost_micros:
        name = COST_PREFIX + usage.line_item
        figures[name] = figures.get(name, 0) + usage.cost_micros


def add_rollup(
    table: Table, org_id: str, day: date, line_item: str, events: int, billable: int, cost: int
) -> None:
    """Fold one `(org, day, line item)` row of the daily rollup into the table."""
    add_stored(table, org_id, day, line_item, events, events, billable, cost)
    table[(org_id, day)].pop("rows")


def add_stored(
    table: Table,
    org_id: str,
    day: date,
    line_item: str,
    rows: int,
    ids: int,
    billable: int,
    cost: int,
) -> None:
    """Fold one `(org, day, line item)` row of the store's figures into the table."""
    figures = table.setdefault((org_id, day), {})
    figures["rows"] = figures.get("rows", 0) + rows
    figures["events"] = figures.get("events", 0) + ids
    meter = METER_OF_LINE_ITEM.get(line_item)
    if meter is not None and billable:
        figures[meter] = figures.get(meter, 0) + billable
    if meter is not None and cost:
        name = COST_PREFIX + line_item
        figures[name] = figures.get(name, 0) + cost


def _diff(
    left: Table, right: Table, names: Iterable[str], check: Check, days: set[date] | None = None
) -> list[Difference]:
    out = []
    names = tuple(names)
    for org, day in sorted(set(left) | set(right)):
        if days is not None and day not in days:
            continue
        a, b = left.get((org, day), {}), right.get((org, day), {})
        for name in names:
            if a.get(name, 0) != b.get(name, 0):
                out.append(Difference(org, day, name, check, a.get(name, 0), b.get(name, 0)))
    return out


def compare(
    broker: Table | None,
    stored_seen: Table | None,
    stored: Table,
    counters: Table,
    counter_days: set[date] | None = None,
    rollups: Table | None = None,
    raw_from: Mapping[str, date] | None = None,
) -> list[Difference]:
    """Every difference, sorted by org and day.

    `broker` and `stored_seen` (the rows of the offsets the broker scan read) are compared
    on events, meters and cost; `stored` (all rows) against `counters` on meters and cost,
    on `counter_days` only if given (counters forget old days); `stored` against `rollups`
    on events, meters and cost; and any stored row counted twice is a `duplicates`
    difference. Before `raw_from[org]` (the org's plan retention deleted its raw events
    there) only `rollups` against `counters` is compared.
    """
    raw_from = raw_from or {}

    def raw(table: Table | None) -> Table | None:
        if table is None or not raw_from:
            return table
        return {k: v for k, v in table.items() if k[0] not in raw_from or k[1] >= raw_from[k[0]]}

    def expired(table: Table | None) -> Table:
        return {
            k: v for k, v in (table or {}).items() if k[0] in raw_from and k[1] < raw_from[k[0]]
        }

    broker, stored_seen, kept = raw(broker), raw(stored_seen), raw(stored)
    assert kept is not None
    out: list[Difference] = []
    if broker is not None and stored_seen is not None:
        out += _diff(broker, stored_seen, ("events",) + MONEY_AND_METERS, "broker/store")
    if rollups is not None:  # the rollup counts rows, duplicates included
        as_rows = {k: {**f, "events": f.get("rows", 0)} for k, f in kept.items()}
        out += _diff(as_rows, raw(rollups) or {}, ("events",) + MONEY_AND_METERS, "store/rollups")
        out += _diff(
            expired(rollups), expired(counters), MONEY_AND_METERS, "rollups/counters", counter_days
        )
    out += _diff(kept, raw(counters) or {}, MONEY_AND_METERS, "store/counters", counter_days)
    for (org, day), figures in sorted(kept.items()):
        rows, events = figures.get("rows", 0), figures.get("events", 0)
        if rows != events:
            out.append(Difference(org, day, "rows", "duplicates", events, rows))
    out.sort(key=lambda d: (d.org_id, d.day, d.check, d.figure))
    return out


def totals(table: Mapping[tuple[str, date], Figures]) -> Figures:
    """The figures of a table summed over orgs and days."""
    out: Figures = {}
    for figures in table.values():
        for name, value in figures.items():
            out[name] = out.get(name, 0) + value
    return out
