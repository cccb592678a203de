"""What preparing a fetch costs the worker's thread per event, with no broker or store: an
event at a time (`streams.batch.process`, and the insert's conversion of its rows) and a
column at a time (`streams.columns`), on the same workload events, in this process."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from commands.bench.workload import Workload
from streams import columns
from streams.batch import PartitionState, Record, process
from streams.rows import event_block
from tally.catalogue import load_prices
from tally.domain.pricing import Pricer


def costs(workload: Workload, events: int = 20_000, fetch: int = 10_000) -> dict[str, float]:
    """Microseconds per event, best of three, for fetches of `fetch` events (or of the
    workload's first `events`, if fewer)."""
    records = [Record(i, value) for i, (_, value) in enumerate(workload.messages[:events])]
    fetches = [records[i : i + fetch] for i in range(0, len(records), fetch)]
    pricer = Pricer(load_prices())
    now = datetime.now(UTC)

    def each() -> None:
        for records in fetches:
            event_block(process(PartitionState(0), records, pricer, now, "bench").rows)

    def by_columns() -> None:
        for records in fetches:
            if columns.take(PartitionState(0), records, pricer, now, "bench") is None:
                raise RuntimeError("the workload's fetch was not taken a column at a time")

    each_us, columns_us = _best(each, len(records)), _best(by_columns, len(records))
    return {
        "prepare_fetch": len(fetches[0]),
        "prepare_each_us": each_us,
        "prepare_columns_us": columns_us,
        "prepare_ratio": round(each_us / columns_us, 2),
    }


def _best(work: Callable[[], None], events: int, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(min(times) / events * 1e6, 2)
