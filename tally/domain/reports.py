"""Usage reports: the parameters users pass and the shaping of what comes back. No I/O.

Ranges are UTC days, half-open: `from` is the first day counted and `to` the first day not
counted, like a billing window's `window_start` / `window_end`. So the current period of an
org is `from=<window_start day>&to=<window_end day>`, and one day is `from=D&to=D+1`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import cast

from tally.domain.usage import LINE_ITEMS

MAX_RANGE_DAYS = 366

# Dimensions a breakdown can be grouped by, as users name them.
GROUPS = ("day", "agent", "line_item", "item", "key_mode", "mode")

# Figures every report row carries; all integers (money in micro-units).
METRICS = (
    "events",
    "tokens",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "tool_calls",
    "billable_tool_calls",
    "requests",
    "storage_byte_seconds",
    "cost_micros",
    "unpriced",
)

KEY_MODES = {"live": ("live",), "test": ("test",), "all": ("live", "test")}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class InvalidParameter(ValueError):
    """A report parameter users got wrong; the message names it and says what is expected."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class DayRange:
    """UTC days `start <= day < end`."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def each_day(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]


def parse_day(parameter: str, raw: str) -> date:
    if not _DATE.match(raw):
        raise InvalidParameter(parameter, f"{raw!r} is not a date; use YYYY-MM-DD (UTC)")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(parameter, f"{raw!r} is not a calendar date") from None


def day_range(
    raw_from: str | None, raw_to: str | None, default: DayRange, max_days: int = MAX_RANGE_DAYS
) -> DayRange:
    """The range asked for, or `default` (the current billing period) when neither is given."""
    if raw_from is None and raw_to is None:
        return default
    if raw_from is None or raw_to is None:
        missing = "from" if raw_from is None else "to"
        raise InvalidParameter(
            missing, "give both from and to, or neither for the current billing period"
        )
    start, end = parse_day("from", raw_from), parse_day("to", raw_to)
    if end <= start:
        raise InvalidParameter(
            "to", f"must be after from ({start}); to is exclusive: from=D&to=D+1 is one day"
        )
    if (end - start).days > max_days:
        raise InvalidParameter(
            "to", f"the range spans {(end - start).days} days; at most {max_days} are allowed"
        )
    return DayRange(start, end)


def group_by(raw: str | None) -> tuple[str, ...]:
    """`day,agent` -> ('day', 'agent'); empty means one total and no rows."""
    if raw is None or not raw.strip():
        return ()
    names = tuple(part.strip() for part in raw.split(","))
    for name in names:
        if name not in GROUPS:
            raise InvalidParameter(
                "group_by", f"{name!r} is not a dimension; use any of {', '.join(GROUPS)}"
            )
    if len(set(names)) != len(names):
        raise InvalidParameter("group_by", "a dimension is named twice")
    return names


def key_modes(raw: str | None) -> tuple[str, ...]:
    """`live` (the default: what is billed), `test`, or `all`."""
    if raw is None:
        return KEY_MODES["live"]
    if raw not in KEY_MODES:
        raise InvalidParameter("key_mode", f"{raw!r} is not one of live, test, all")
    return KEY_MODES[raw]


def line_item(raw: str | None) -> str | None:
    if raw is not None and raw not in LINE_ITEMS:
        raise InvalidParameter(
            "line_item", f"{raw!r} is not a line item; use one of {', '.join(LINE_ITEMS)}"
        )
    return raw


def identifier(parameter: str, raw: str | None) -> str | None:
    if raw is not None and not 1 <= len(raw) <= 128:
        raise InvalidParameter(parameter, "must be 1 to 128 characters")
    return raw


Metrics = dict[str, int]


def zero() -> Metrics:
    return dict.fromkeys(METRICS, 0)


def add(total: Metrics, other: Mapping[str, int]) -> Metrics:
    """`total` plus `other`, figure by figure (a new dict)."""
    return {m: total.get(m, 0) + int(other.get(m, 0)) for m in METRICS}


def total_of(rows: Iterable[Mapping[str, int]]) -> Metrics:
    """The figures of `rows` added up (in place: a breakdown may have thousands of rows)."""
    out = zero()
    for row in rows:
        for m in METRICS:
            out[m] += int(row.get(m, 0))
    return out


def fill_days(
    span: DayRange, by_day: Mapping[date, Mapping[str, int]]
) -> list[tuple[date, Metrics]]:
    """Every day of `span` in order, with zeros where nothing was used."""
    return [(d, add(zero(), by_day.get(d, {}))) for d in span.each_day()]


def split_rows(
    groups: Sequence[str], rows: Sequence[Sequence[object]]
) -> tuple[list[tuple[tuple[object, ...], Metrics]], Metrics]:
    """Result rows laid out as `groups` then `METRICS`, as (group values, figures) each, and
    their total. Column by column: a breakdown may have thousands of rows."""
    n, width = len(groups), len(groups) + len(METRICS)
    if any(len(row) != width for row in rows):
        raise ValueError("row does not match the groups and metrics")
    columns = list(zip(*rows, strict=True))[n:] if rows else [()] * len(METRICS)
    for column in columns:
        if not set(map(type, column)) <= {int}:  # not a float, not a bool
            bad = next(v for v in column if type(v) is not int)
            raise TypeError(f"expected an integer figure, got {bad!r}")
    figures = cast(list[tuple[int, ...]], columns)  # every value checked above
    total = {m: sum(column) for m, column in zip(METRICS, figures, strict=True)}
    split = [
        (tuple(row[:n]), cast(Metrics, dict(zip(METRICS, row[n:], strict=True)))) for row in rows
    ]
    return split, total


def split_row(groups: Sequence[str], values: Sequence[object]) -> tuple[dict[str, object], Metrics]:
    """A result row laid out as `groups` then `METRICS`, as (group values, figures)."""
    if len(values) != len(groups) + len(METRICS):
        raise ValueError("row does not match the groups and metrics")
    keys = dict(zip(groups, values[: len(groups)], strict=True))
    figures: Metrics = {}
    for m, value in zip(METRICS, values[len(groups) :], strict=True):
        if type(value) is not int:  # not a float, not a bool
            raise TypeError(f"expected an integer figure, got {value!r}")
        figures[m] = value
    return keys, figures
