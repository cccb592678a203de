"""Quota arithmetic: windows for an org and the figures a quota read returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from schemas.plans import Plan
from tally.domain.counters import day_bucket
from tally.domain.windows import Window, day_window, minute_window, monthly_window


@dataclass(frozen=True, slots=True)
class Figures:
    limit: int | None
    used: int | None
    remaining: int | None


def figures(limit: int | None, used: int | None) -> Figures:
    """`remaining = max(limit - used, 0)`; unknown when either side is unknown."""
    if limit is None or used is None:
        return Figures(limit, used, None)
    return Figures(limit, used, max(limit - used, 0))


def billing_window(anchor: date, now: datetime) -> Window:
    """The monthly window anchored on `anchor`'s day of month that contains `now`."""
    return monthly_window(anchor.day, now)


def day_buckets(window: Window) -> range:
    first = day_bucket(window.start.date())
    return range(first, first + (window.end - window.start).days)


@dataclass(frozen=True, slots=True)
class Meter:
    """One meter over one window: the five fields of the published quota shape."""

    limit: int | None
    used: int | None
    remaining: int | None
    window: Window


def meter(limit: int | None, used: int | None, window: Window) -> Meter:
    f = figures(limit, used)
    return Meter(f.limit, f.used, f.remaining, window)


@dataclass(frozen=True, slots=True)
class Used:
    """What an org has used, read from the counters; `None` while a figure is unavailable.

    Monthly figures cover the billing window (`runs`: the live runs with an event in it);
    `requests_day` and `requests_minute` the current UTC day and minute; `sessions` counts
    the sessions running now.
    """

    tokens: int | None = 0
    tool_calls: int | None = 0
    requests: int | None = 0
    requests_day: int | None = 0
    requests_minute: int | None = 0
    upstream_cost_micros: int | None = 0
    sessions: int | None = 0
    runs: int | None = 0


@dataclass(frozen=True, slots=True)
class Sessions:
    limit: int | None
    active: int | None
    remaining: int | None


@dataclass(frozen=True, slots=True)
class Overview:
    """Every meter of an org in every window: month, day, minute and concurrency."""

    window: Window
    tokens: Meter
    tool_calls: Meter
    requests: Meter
    requests_minute: Meter
    requests_day: Meter
    upstream_cost_micros: Meter
    sessions: Sessions
    runs: Meter


def overview(plan: Plan, window: Window, now: datetime, used: Used) -> Overview:
    """The figures of every meter, from a plan's allowances and what has been used."""
    s = figures(plan.concurrent_sessions, used.sessions)
    return Overview(
        window=window,
        tokens=meter(plan.tokens_per_period, used.tokens, window),
        tool_calls=meter(plan.tool_calls_per_month, used.tool_calls, window),
        requests=meter(plan.requests_per_month, used.requests, window),
        requests_minute=meter(plan.requests_per_minute, used.requests_minute, minute_window(now)),
        requests_day=meter(plan.requests_per_day, used.requests_day, day_window(now)),
        upstream_cost_micros=meter(
            plan.upstream_cost_micros_per_month, used.upstream_cost_micros, window
        ),
        sessions=Sessions(s.limit, s.used, s.remaining),
        runs=meter(plan.runs_per_month, used.runs, window),
    )
