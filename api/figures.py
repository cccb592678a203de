"""What an org has used, read from the in-memory counter table (never from ClickHouse).

Monthly meters are per-UTC-day counters summed over the org's billing window; the request
bursts read the current day and minute buckets; sessions the org's running count.
"""

from __future__ import annotations

from datetime import datetime

from api.counter_table import CounterTable
from tally.domain import counters as c
from tally.domain.quota import Used, day_buckets
from tally.domain.windows import Window

UNAVAILABLE = Used(None, None, None, None, None, None, None)


def used(table: CounterTable, org_id: str, window: Window, now: datetime) -> Used:
    """Every figure of `org_id` at `now`; all `None` until the table has caught up."""
    if not table.ready.is_set():
        return UNAVAILABLE
    days = day_buckets(window)
    return Used(
        tokens=table.total(org_id, c.TOKENS, days),
        tool_calls=table.total(org_id, c.TOOL_CALLS, days),
        requests=table.total(org_id, c.REQUESTS, days),
        requests_day=table.get((org_id, c.REQUESTS, c.epoch_day(now))),
        requests_minute=table.get((org_id, c.REQUESTS_MINUTE, c.epoch_minute(now))),
        upstream_cost_micros=table.total(org_id, c.UPSTREAM_COST, days),
        sessions=max(table.get((org_id, c.SESSIONS, 0)), 0),
    )
