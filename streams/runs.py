"""A batch's runs, event by event (part of the definition, `streams.batch`; the rules are
tally.domain.runs).

Each live run's active days are kept per partition under `key(org_id, run_id)`; a batch
not yet applied reads them newest first: the batch itself, the batches prepared before it,
then the partition state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from tally.domain import runs as rules
from tally.domain.counters import CounterKey


class Runs(Protocol):
    """What holds runs: a batch's result or the partition state."""

    runs: dict[str, rules.Days]


class Counted(Runs, Protocol):
    deltas: dict[CounterKey, int]


def key(org_id: str, run_id: str) -> str:
    """One string per run: a run held costs its key and a day tuple, no more."""
    return f"{org_id}\x1f{run_id}"


def arrive(
    result: Counted,
    state: Runs,
    pending: Sequence[Runs],
    events: Iterable[tuple[str, str, int]],
    keep_from: int,
) -> None:
    """Live events of runs, as `(org_id, run_id, day)`: each run's new active day, if it is
    one, and the runs counters it moves. A day before `keep_from` (the first kept day) is
    in no window a quota read can ask for, and counts no run."""
    got, kept, deltas = result.runs, state.runs, result.deltas
    before = pending[::-1]
    for org_id, run_id, day in events:
        if day < keep_from:
            continue
        rk = f"{org_id}\x1f{run_id}"
        days = got.get(rk)
        if days is None:
            for batch in before:
                days = batch.runs.get(rk)
                if days is not None:
                    break
            else:
                days = kept.get(rk, ())
        new, changes = rules.arrive(days, day)
        if not changes:
            continue
        got[rk] = new
        for name, bucket, change in changes:
            k = (org_id, name, bucket)
            value = deltas.get(k, 0) + change
            if value:
                deltas[k] = value
            else:  # moved and moved back within the batch: in any order, the same deltas
                del deltas[k]


def forget(kept: dict[str, rules.Days], keep_from: int) -> None:
    """Drop the runs with no day from `keep_from` on, and the days no gap needs any more."""
    for rk in [rk for rk, days in kept.items() if days[0] < keep_from]:
        trimmed = rules.trim(kept[rk], keep_from)
        if trimmed is None:
            del kept[rk]
        else:
            kept[rk] = trimmed
