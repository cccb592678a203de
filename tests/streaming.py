"""Traffic for workers on a real broker, and what it must add up to.

`Traffic` sends events for many orgs round after round (every kind of event, sessions that
end five rounds later, producer retries); `expected()` is the independent account of the
counters and stored rows they make, each event counted once. Shared by the tests that move
partitions between workers (test_rebalance) and change their count (test_partition_count).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.batch import ENDED, SESSION_BITS, STARTED
from streams.decode import decode
from streams.sink import ClickHouseSink
from streams.worker import Worker
from tally.catalogue import load_prices
from tally.config import EVENTS_TOPIC
from tally.domain import counters, runs
from tally.domain.counters import CounterKey
from tally.domain.pricing import Pricer
from tally.domain.usage import measure
from tally.store import Store
from tests.conftest import eventually
from tests.factories import make_event, wire

BOOK = load_prices()


class Traffic:
    """Events for every org, round after round, with producer retries and sessions."""

    def __init__(self, bootstrap: str, orgs: list[str], first_round: int = 0) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.orgs = orgs
        self.sent: list[dict[str, Any]] = []
        self.flowing = asyncio.Event()
        self._rng = random.Random(11)
        self._round = first_round  # a stream continued elsewhere goes on with its sessions
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        self.flowing.set()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a failure to produce surfaces here
        await self.producer.stop()

    def _events(self, r: int, i: int, org: str) -> list[dict[str, Any]]:
        kind = (r + i) % 5
        if kind == 0:
            return [make_event(org_id=org, input_tokens=100 + r, output_tokens=i)]
        if kind == 1:
            return [make_event("tool.call", org_id=org, success=r % 7 != 0)]
        if kind == 2:
            return [make_event("gateway.request", org_id=org)]
        if kind == 3:  # start a session, end the one started five rounds ago
            out = [make_event("session.started", org_id=org, session_id=f"s-{r}")]
            if r >= 5:
                out.append(make_event("session.ended", org_id=org, session_id=f"s-{r - 5}"))
            return out
        return [make_event(org_id=org, mode="byok", model="gpt-4o-mini", input_tokens=r)]

    async def _run(self) -> None:
        while True:
            await self.flowing.wait()
            batch = [
                e for i, org in enumerate(self.orgs) for e in self._events(self._round, i, org)
            ]
            if self.sent:  # producer retries: events already sent, sent again
                batch += self._rng.sample(self.sent, min(5, len(self.sent)))
            for e in batch:
                await self.producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
            await self.producer.flush()
            self.sent += batch
            self._round += 1
            await asyncio.sleep(0.1)

    @property
    def rounds(self) -> int:
        """Rounds sent so far: where a continuation of this stream starts."""
        return self._round

    async def pause(self) -> None:
        self.flowing.clear()
        await asyncio.sleep(0.3)  # let the round being sent finish
        await self.producer.flush()


def expected(
    sent: list[dict[str, Any]],
) -> tuple[dict[CounterKey, int], Counter[str], Counter[str]]:
    """Counters, stored rows and billable totals per org, each event counted once."""
    pricer = Pricer(BOOK)
    values: dict[CounterKey, int] = {}
    rows: Counter[str] = Counter()
    billable: Counter[str] = Counter()
    sessions: dict[tuple[str, str], int] = {}
    run_days: dict[tuple[str, str], set[int]] = {}  # each live run's active days
    unique = {e["event_id"]: e for e in sent}
    for e in unique.values():
        event = decode(wire(e))
        if event["run_id"] and event["key_mode"] == "live":
            run = (event["org_id"], event["run_id"])
            run_days.setdefault(run, set()).add(counters.epoch_day(event["ts"]))
        usage = measure(event, pricer)
        counters.add(values, event["org_id"], event["ts"], usage)
        if event["type"] in SESSION_BITS and event["key_mode"] == "live":
            sk = (event["org_id"], event["session_id"])
            sessions[sk] = sessions.get(sk, 0) | SESSION_BITS[event["type"]]
        rows[event["org_id"]] += 1
        billable[event["org_id"]] += usage.billable
    for (org, _), flags in sessions.items():
        if flags == STARTED:
            key = (org, counters.SESSIONS, 0)
            values[key] = values.get(key, 0) + 1
    for (org, _), days in run_days.items():
        for name, day in runs.counted(sorted(days)):
            values[org, name, day] = values.get((org, name, day), 0) + 1
    assert any(f == STARTED | ENDED for f in sessions.values())
    return {k: v for k, v in values.items() if v}, rows, billable


def owned(worker: Worker) -> set[int]:
    """The partitions the group gave this worker (read from its consumer)."""
    consumer = worker._consumer
    return {tp.partition for tp in consumer.assignment()} if consumer is not None else set()


async def states_match_the_store(worker: Worker, store: Store) -> bool:
    """Each owned partition's live state is what the store rebuilds for it."""
    sink = ClickHouseSink(store, worker.sink.base_epoch, worker.settings.dedup_window_s)
    for partition, state in list(worker.states.items()):
        loaded = await sink.load(partition, state.partitions)
        live = {k: v for k, v in state.counters.items() if v}
        if (
            loaded.next_offset != state.next_offset
            or loaded.counters != live
            or loaded.sessions != state.sessions
            or loaded.leases != state.leases
            or set(loaded.seen) != set(state.seen)
            or loaded.runs != state.runs
            or loaded.holds != state.holds
            or loaded.clocks != state.clocks
        ):
            return False
    return True


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    async def check() -> bool:
        return predicate()

    await eventually(check, timeout=timeout)
