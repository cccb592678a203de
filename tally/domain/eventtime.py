"""The event-time policy: how far in the past and in the future an event's `ts` may be.

An event is usage that just happened. One whose `ts` is more than `max_age_days`
(TALLY_MAX_EVENT_AGE_DAYS, 35) in the past, or more than `max_skew_s` (TALLY_MAX_EVENT_SKEW_S,
300) in the future, is refused with a reason that says which and what to do: the API refuses
it in its answer, the worker sends it to the DLQ. Both judge by their own clock, when they
read the event.

History goes through `tally backfill FILE --from DAY --to DAY`, which sends each event with
its range of UTC days (`Backfill`, a Kafka header): an event older than the limit is accepted
when it carries a range that holds its `ts`. The future limit holds for history too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

MAX_AGE_DAYS = 35
MAX_SKEW_S = 300
BACKFILL_HEADER = "tally-backfill"


def iso(ts: datetime) -> str:
    """`ts` in UTC as the contract writes it: 2026-10-01T00:00:00Z, with a fraction only if it
    has one, in milliseconds unless it has microseconds."""
    us = ts.microsecond
    spec = "seconds" if not us else "milliseconds" if not us % 1000 else "microseconds"
    return ts.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Backfill:
    """A range of UTC days history is sent for: from `first` up to `end`, `end` excluded
    (`tally backfill --from first --to end`)."""

    first: date
    end: date

    def __post_init__(self) -> None:
        if self.end <= self.first:
            raise ValueError(
                f"--to ({self.end}) must be after --from ({self.first}): it is the day after"
                " the last day of the range"
            )

    @property
    def start_time(self) -> datetime:
        return datetime.combine(self.first, time(), UTC)

    @property
    def end_time(self) -> datetime:
        return datetime.combine(self.end, time(), UTC)

    def covers(self, ts: datetime) -> bool:
        return self.start_time <= ts < self.end_time

    def header(self) -> tuple[str, bytes]:
        """The Kafka header that marks an event as history of this range."""
        return BACKFILL_HEADER, f"{self.first.isoformat()}/{self.end.isoformat()}".encode()

    @classmethod
    def parse(cls, value: bytes) -> Backfill | None:
        """The range a header names, or None if it names none."""
        try:
            first, end = value.decode("ascii").split("/")
            return cls(date.fromisoformat(first), date.fromisoformat(end))
        except ValueError:  # also UnicodeDecodeError
            return None

    @classmethod
    def of(cls, headers: Iterable[tuple[str, bytes]]) -> Backfill | None:
        """The range among a message's headers, if it carries one."""
        for name, value in headers:
            if name == BACKFILL_HEADER:
                return cls.parse(bytes(value))
        return None

    def __str__(self) -> str:
        return f"--from {self.first.isoformat()} --to {self.end.isoformat()}"


@dataclass(frozen=True, slots=True)
class EventTime:
    """The limits: `max_age_days` into the past, `max_skew_s` into the future."""

    max_age_days: int = MAX_AGE_DAYS
    max_skew_s: int = MAX_SKEW_S

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """The oldest and the newest `ts` taken without a look at anything else."""
        return now - timedelta(days=self.max_age_days), now + timedelta(seconds=self.max_skew_s)

    def refusal(self, ts: datetime, now: datetime, backfill: Backfill | None = None) -> str | None:
        return refusal(ts, now, self.max_age_days, self.max_skew_s, backfill)


DEFAULT = EventTime()


def refusal(
    ts: datetime,
    now: datetime,
    max_age_days: int = MAX_AGE_DAYS,
    max_skew_s: int = MAX_SKEW_S,
    backfill: Backfill | None = None,
) -> str | None:
    """Why an event of time `ts`, read at `now`, is refused; None if it is taken.

    `backfill`: the range of history the event was sent with, if any; it lets an event
    older than `max_age_days` through when it holds the event's `ts`."""
    if ts > now + timedelta(seconds=max_skew_s):
        return (
            f"ts: {iso(ts)} is more than {max_skew_s} s in the future"
            " (TALLY_MAX_EVENT_SKEW_S); check the clock of the runtime that sent it"
        )
    if ts < now - timedelta(days=max_age_days):
        if backfill is None:
            return (
                f"ts: {iso(ts)} is more than {max_age_days} days in the past"
                " (TALLY_MAX_EVENT_AGE_DAYS); send history with"
                " `tally backfill FILE --from DAY --to DAY`"
            )
        if not backfill.covers(ts):
            return (
                f"ts: {iso(ts)} is more than {max_age_days} days in the past"
                f" (TALLY_MAX_EVENT_AGE_DAYS) and outside the backfill range it was sent with"
                f" ({backfill})"
            )
    return None
