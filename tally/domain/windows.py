"""Billing windows: monthly periods anchored on a day of the month, in UTC.

An anchor on the 29th-31st falls on the last day of shorter months, and the next period
returns to the anchor day when the month is long enough (anchor 31: Jan 31, Feb 28, Mar 31).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime

    def contains(self, t: datetime) -> bool:
        return self.start <= t < self.end

    def days(self) -> list[date]:
        """Every UTC day in the window, in order."""
        first = self.start.date()
        return [first + timedelta(days=i) for i in range((self.end - self.start).days)]


def _anchored(year: int, month: int, anchor_day: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(anchor_day, last), tzinfo=UTC)


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


# The window last computed for each anchor day: one period contains `now` for a given anchor,
# so while it still does it is the answer (every quota read asks for the current one).
_last: dict[int, Window] = {}


def monthly_window(anchor_day: int, now: datetime) -> Window:
    """The monthly period anchored on `anchor_day` (1-31) that contains `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    last = _last.get(anchor_day)
    if last is not None and last.start <= now < last.end:
        return last
    if not 1 <= anchor_day <= 31:
        raise ValueError("anchor_day must be between 1 and 31")
    now = now.astimezone(UTC)
    start = _anchored(now.year, now.month, anchor_day)
    if now < start:
        start = _anchored(*_shift(now.year, now.month, -1), anchor_day)
    end = _anchored(*_shift(start.year, start.month, 1), anchor_day)
    window = _last[anchor_day] = Window(start, end)
    return window


def day_window(now: datetime) -> Window:
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return Window(start, start + timedelta(days=1))


def minute_window(now: datetime) -> Window:
    start = now.astimezone(UTC).replace(second=0, microsecond=0)
    return Window(start, start + timedelta(minutes=1))
