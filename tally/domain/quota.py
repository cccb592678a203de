"""Quota arithmetic: windows for an org and the figures a quota read returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from tally.domain.counters import day_bucket
from tally.domain.windows import Window, monthly_window


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
