"""The runs meter: a live run counts once per billing window, whatever that window is.

A run is counted in a window when at least one of its live events has a `ts` in it. The
worker does not know an org's billing anchor (it changes with the plan, and a plan change
needs no recount), so it keeps per-day counters that any monthly window can be summed from:

For each run, its active days (UTC days with a live event) in order d1 < d2 < ...; each
active day d is counted once under the gap since the run's active day before it
(`gap = d - previous`, or none for its first). A window [S, S + L) with L <= 31 days holds
the run exactly once: at its first active day d in the window, the one whose previous
active day is before S, i.e. whose gap is more than d - S. So

    used(window) = sum over its days d of the runs counted on d with a gap > d - S

Gaps of MAX_GAP days or more, and first days, are kept under `runs` (always in); the others
under `runs.<gap>` (in when the day is fewer than `gap` days into the window). A late event
that falls between two active days moves the later one to a smaller gap: its key goes down
by one and another goes up, and no window's sum ever goes down.

Pure: plain values in, plain values out; the worker and the API share it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

RUNS = "runs"
MAX_GAP = 31  # a monthly billing window is at most 31 days long
GAP_NAMES = {g: f"{RUNS}.{g}" for g in range(1, MAX_GAP)}

Days = tuple[int, ...]  # a run's active days, in order
Delta = tuple[str, int, int]  # (counter name, day, change)

_single: dict[int, Days] = {}  # one shared tuple per day: most runs live one day


def name_of(gap: int | None) -> str:
    """The counter name of an active day `gap` days after the run's previous one."""
    if gap is None or gap >= MAX_GAP:
        return RUNS
    return GAP_NAMES[gap]


def arrive(days: Days, day: int) -> tuple[Days, list[Delta]]:
    """A live event of a run on `day`, given the run's active days so far: its new active
    days and the counter changes (none when the day is already active)."""
    if not days:  # a new run: the common case
        return shared((day,)), [(RUNS, day, 1)]
    at = bisect_left(days, day)
    if at < len(days) and days[at] == day:
        return days, []
    before = days[at - 1] if at else None
    after = days[at] if at < len(days) else None
    deltas = [(name_of(None if before is None else day - before), day, 1)]
    if after is not None:
        deltas.append((name_of(None if before is None else after - before), after, -1))
        deltas.append((name_of(after - day), after, 1))
    return (*days[:at], day, *days[at:]), deltas


def shared(days: Days) -> Days:
    """`days`, as the one tuple kept for it when it is a single day."""
    if len(days) != 1:
        return days
    return _single.setdefault(days[0], days)


def counted(days: Iterable[int]) -> Iterator[tuple[str, int]]:
    """The counter of every active day of a run (its days in order): a rebuild's figures."""
    before = None
    for day in days:
        yield name_of(None if before is None else day - before), day
        before = day


def used(total: Callable[[str, range], int], first_day: int, length: int) -> int:
    """Runs in the window of `length` days from `first_day`; `total(name, days)` sums a
    counter over days (the counter table keeps such sums)."""
    n = total(RUNS, range(first_day, first_day + length))
    for gap, name in GAP_NAMES.items():
        n += total(name, range(first_day, first_day + min(gap, length)))
    return n


def trim(days: Days, keep_from: int) -> Days | None:
    """A run's active days without those before `keep_from` that no gap needs any more, or
    None when the run has no day from `keep_from` on. The day just before `keep_from` is
    kept: later days' gaps are measured from it, and no event before `keep_from` is counted
    (`KEEP_DAYS`: no window a quota read can ask for holds one)."""
    if days[-1] < keep_from:
        return None
    at = bisect_left(days, keep_from)
    return days if at <= 1 else days[at - 1 :]
