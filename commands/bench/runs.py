"""The runs meter at scale, measured in a fresh process so that nothing else is counted.

RUNS live runs of two LLM events each, spread over the days of a billing window, go through
the worker's own counting (`streams.columns.process` and `apply`, fetch by fetch, as the
worker counts a partition) into one partition's state. Reported: the worker's memory per
run (the process's resident growth, and the size of the runs state itself), the time per
event with and without run ids (what the meter costs on the hot path), and what is left of
the runs once their days are past the counters' horizon (memory stays bounded by the runs
of the current windows).

Run as `python -m commands.bench.runs RUNS`; prints one JSON object.
"""

from __future__ import annotations

import functools
import gc
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson

from commands.bench.memory import rss_bytes
from streams import columns
from streams.batch import PartitionState, Record, apply
from tally.catalogue import load_prices
from tally.domain import runs as run_meter
from tally.domain.counters import KEEP_DAYS, epoch_day
from tally.domain.pricing import Pricer

FETCH = 20_000  # events per fetch (the worker's TALLY_BATCH_MAX_RECORDS)
ORGS = 1_000
DAYS = 30
TURNS = 3


def fetches(runs: int, now: datetime, with_runs: bool = True) -> Iterator[list[Record]]:
    """The events of `runs` runs (two each, on a day of the last DAYS), a fetch at a time."""
    batch: list[Record] = []
    offset = 0
    for n in range(runs):
        day = now - timedelta(days=n % DAYS, seconds=n % 3_600)
        ts = day.isoformat().replace("+00:00", "Z")
        for step in range(2):
            event = {
                "event_id": f"ev-{n}-{step}",
                "org_id": f"org-{n % ORGS:05d}",
                "agent_id": "agent-1",
                "run_id": f"run-{n:09d}" if with_runs else None,
                "key_mode": "live",
                "ts": ts,
                "type": "llm.usage",
                "model": "gpt-4o",
                "input_tokens": 1_000,
                "output_tokens": 100,
            }
            batch.append(Record(offset, orjson.dumps(event)))
            offset += 1
            if len(batch) == FETCH:
                yield batch
                batch = []
    if batch:
        yield batch


def count(runs: int, now: datetime, with_runs: bool = True) -> tuple[PartitionState, float]:
    """Every fetch counted into one partition's state; the state and the seconds spent
    counting (event ids are forgotten after each fetch: the dedup window is measured by
    `commands.bench.memory`'s neighbours, not here)."""
    pricer = Pricer(load_prices())
    state = PartitionState(0)
    spent = 0.0
    for fetch in fetches(runs, now, with_runs):
        started = time.perf_counter()
        result = columns.process(state, fetch, pricer, now, "bench")
        apply(state, result)
        spent += time.perf_counter() - started
        state.seen.clear()
    return state, spent


def runs_state_bytes(state: PartitionState) -> int:
    """The runs state's own size: its dict, keys and day tuples (a tuple shared by many
    runs counted once)."""
    runs = state.runs
    tuples = {id(days): days for days in runs.values()}
    return (
        sys.getsizeof(runs)
        + sum(sys.getsizeof(k) for k in runs)
        + sum(sys.getsizeof(days) for days in tuples.values())
    )


def counted(state: PartitionState, runs: int, now: datetime) -> int:
    """The runs of every org in a window of DAYS + 1 days (which holds every event), summed
    from the counters as a quota read sums them."""
    kept = state.counters
    first = epoch_day(now) - DAYS

    def total(org: str, name: str, days: range) -> int:
        return sum(kept.get((org, name, d), 0) for d in days)

    orgs = {f"org-{n:05d}" for n in range(min(runs, ORGS))}
    return sum(run_meter.used(functools.partial(total, org), first, DAYS + 1) for org in orgs)


def measure(runs: int) -> dict[str, float]:
    now = datetime.now(UTC)
    count(FETCH, now)  # imports and first-use costs, not counted below
    gc.collect()
    before = rss_bytes()
    state, spent = count(runs, now)
    gc.collect()
    grown = rss_bytes() - before
    total = counted(state, runs, now)
    assert total == runs, f"counted {total} runs of {runs}"
    figures = {
        "runs": runs,
        "runs_events": 2 * runs,
        "runs_worker_bytes_per_run": round(grown / runs, 1),
        "runs_state_bytes_per_run": round(runs_state_bytes(state) / runs, 1),
        "runs_count_us_per_event": round(spent / (2 * runs) * 1e6, 2),
    }
    state.expire(now + timedelta(days=KEEP_DAYS + DAYS), 0)
    figures["runs_kept_after_horizon"] = len(state.runs)
    del state
    gc.collect()
    # The same events with and without run ids, in alternate turns (the machine is shared:
    # the best turn of each is the one least disturbed).
    size = min(runs, 100_000)
    plain, with_ids = [], []
    for _ in range(TURNS):
        plain.append(count(size, now, with_runs=False)[1])
        with_ids.append(count(size, now)[1])
    per_event = 1e6 / (2 * size)
    figures["runs_count_us_per_event_without_run_ids"] = round(min(plain) * per_event, 2)
    figures["runs_count_us_per_event_with_run_ids"] = round(min(with_ids) * per_event, 2)
    return figures


if __name__ == "__main__":
    print(orjson.dumps(measure(int(sys.argv[1]))).decode())
