"""What an org has used, read from the in-memory counter table (never from ClickHouse).

Monthly meters are per-UTC-day counters summed over the org's billing window; the request
bursts read the current day and minute buckets; sessions the org's running count; runs
the per-day runs counters of `tally.domain.runs`. Every
figure is `None` until the table has caught up. A quota read of one meter reads that meter
alone; `used()` reads them all (the overview, admission checks).
"""

from __future__ import annotations

from datetime import datetime

from api.counter_table import CounterTable
from tally.domain import counters as c
from tally.domain import runs as run_meter
from tally.domain.quota import Used, day_buckets
from tally.domain.windows import Window

UNAVAILABLE = Used(*(None,) * len(Used.__dataclass_fields__))


def monthly(table: CounterTable, org_id: str, name: str, window: Window) -> int | None:
    """A monthly meter (`tally.domain.counters` name) summed over the billing window."""
    if not table.ready.is_set():
        return None
    return table.total(org_id, name, day_buckets(window))


def runs(table: CounterTable, org_id: str, window: Window) -> int | None:
    """Live runs with an event in the billing window (tally.domain.runs)."""
    if not table.ready.is_set():
        return None
    days = day_buckets(window)
    return run_meter.used(
        lambda name, buckets: table.total(org_id, name, buckets), days.start, len(days)
    )


def requests_day(table: CounterTable, org_id: str, now: datetime) -> int | None:
    if not table.ready.is_set():
        return None
    return table.get((org_id, c.REQUESTS, c.epoch_day(now)))


def requests_minute(table: CounterTable, org_id: str, now: datetime) -> int | None:
    if not table.ready.is_set():
        return None
    return table.get((org_id, c.REQUESTS_MINUTE, c.epoch_minute(now)))


def sessions(table: CounterTable, org_id: str) -> int | None:
    """Sessions running now (a count that briefly dips below 0 reads as 0)."""
    if not table.ready.is_set():
        return None
    return max(table.get((org_id, c.SESSIONS, 0)), 0)


def used(table: CounterTable, org_id: str, window: Window, now: datetime) -> Used:
    """Every figure of `org_id` at `now`."""
    if not table.ready.is_set():
        return UNAVAILABLE
    return Used(
        tokens=monthly(table, org_id, c.TOKENS, window),
        tool_calls=monthly(table, org_id, c.TOOL_CALLS, window),
        requests=monthly(table, org_id, c.REQUESTS, window),
        requests_day=requests_day(table, org_id, now),
        requests_minute=requests_minute(table, org_id, now),
        upstream_cost_micros=monthly(table, org_id, c.UPSTREAM_COST, window),
        sessions=sessions(table, org_id),
        runs=runs(table, org_id, window),
    )


def reserved(table: CounterTable, org_id: str, meter: str) -> int | None:
    """What the org's admitted reservations hold against `meter` (None until loaded)."""
    if not table.ready.is_set():
        return None
    return max(table.get((org_id, c.RESERVED_PREFIX + meter, 0)), 0)
