"""The call log: one org's raw events, newest first, a page at a time. No I/O.

Paging is by keyset on `(ts, event_id)`, the order of the events table's key, and every walk
through the log reads one fixed set of events: those stored by the instant of its first page
(`as_of`, compared with each row's `ingested_at`). So while events keep arriving, a walk
neither repeats nor skips one: an event stored later, even one with an old `ts` that would
sort among pages already read, belongs to the next walk, and each page continues strictly
below the last `(ts, event_id)` returned. The cursor carries `as_of` and that position.

Whether an event was billed: live traffic is billed, except a failed tool call; test-key
traffic is recorded and free (`tally.domain.usage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from tally.domain.reports import InvalidParameter, parse_day
from tally.domain.retention import cutoff

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATUSES = ("success", "failed")

Status = Literal["success", "failed"]
NotBilled = Literal["failed", "test_key"]

# as_of, then ts (milliseconds since the epoch), then the event_id's UTF-8 bytes in hex.
CURSOR_PATTERN = r"^(\d{1,15})\.(\d{1,15})\.((?:[0-9a-f]{2})*)$"
CURSOR = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: below `(ts_ms, event_id)`, among events stored by
    `as_of_ms` (milliseconds since the Unix epoch, UTC)."""

    as_of_ms: int
    ts_ms: int
    event_id: str

    def encode(self) -> str:
        return f"{self.as_of_ms}.{self.ts_ms}.{self.event_id.encode().hex()}"


# Above every event time the store can hold (DateTime64(3) ends with 2299): the first page.
_TOP_MS = 10_413_791_999_999


def first_page(as_of: datetime) -> Cursor:
    """The position of a walk's first page: above every event stored by `as_of`."""
    return Cursor(epoch_ms(as_of), _TOP_MS, "")


def decode_cursor(raw: str) -> Cursor:
    """A cursor from `next_cursor`. Any text of the cursor's shape is a position in the
    log (times beyond the store's range are clamped to it); anything else is refused."""
    match = CURSOR.match(raw)
    if match is None:
        raise InvalidParameter("cursor", "not a cursor from next_cursor; start without one")
    as_of, ts, eid = match.groups()
    event_id = bytes.fromhex(eid).decode("utf-8", "replace")
    return Cursor(min(int(as_of), _TOP_MS), min(int(ts), _TOP_MS), event_id)


@dataclass(frozen=True, slots=True)
class Span:
    """Event times `start <= ts < end`; `None` leaves that side open."""

    start: datetime | None
    end: datetime | None


def span(
    raw_from: str | None, raw_to: str | None, retention_days: int | None, now: datetime
) -> Span:
    """The days asked for (`to` exclusive, either may be left out), within the plan's log
    retention: a range that starts before the oldest kept day is refused, naming it."""
    start = _midnight(parse_day("from", raw_from)) if raw_from is not None else None
    end = _midnight(parse_day("to", raw_to)) if raw_to is not None else None
    if start is not None and end is not None and end <= start:
        raise InvalidParameter("to", f"must be after from ({raw_from}); to is exclusive")
    if retention_days is None:
        return Span(start, end)
    oldest = cutoff(retention_days, now)
    if start is None:
        return Span(oldest, end)
    if start < oldest:
        raise OutsideRetention(retention_days, oldest.date())
    return Span(start, end)


class OutsideRetention(InvalidParameter):
    """A range older than the plan keeps raw events."""

    def __init__(self, days: int, oldest: date) -> None:
        super().__init__(
            "from",
            f"the plan keeps the call log for {days} days: from must be {oldest} or later"
            " (usage totals stay in the breakdowns)",
        )
        self.days = days
        self.oldest = oldest


def limit(raw: int | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not 1 <= raw <= MAX_LIMIT:
        raise InvalidParameter("limit", f"must be 1 to {MAX_LIMIT}")
    return raw


def status(raw: str | None) -> Status | None:
    if raw is None:
        return None
    if raw == "success":
        return "success"
    if raw == "failed":
        return "failed"
    raise InvalidParameter("status", f"{raw!r} is not one of {', '.join(STATUSES)}")


def failed(event_type: str, success: int) -> bool:
    """Only a tool call fails; every other event is a success."""
    return event_type == "tool.call" and not success


def not_billed(event_type: str, key_mode: str, success: int) -> NotBilled | None:
    """Why an event was not billed, or `None` when it was."""
    if key_mode != "live":
        return "test_key"
    if failed(event_type, success):
        return "failed"
    return None


def epoch_ms(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(milliseconds=1)


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
