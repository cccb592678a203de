"""Freshness: from emitting one event to the quota read showing it.

The background load comes from a process of its own, as agent runtimes are: producing
10,000 events/s costs CPU that a runtime pays, not the worker (the bench reports how much
of a core: `freshness_load_cpu`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from commands.bench.stats import cpu_seconds, percentile
from commands.runtime import Tally
from tally.broker import die_with_parent
from tally.config import EVENTS_TOPIC
from tally.domain import counters
from tally.domain.partitioning import partition_of

LOAD_ORGS = [f"load-org-{i}" for i in range(50)]
PROBE_TIMEOUT_S = 30.0  # a probe not counted by then is an error, not a figure


def _event(org: str, tokens: int, event_id: str | None = None, ts: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id or uuid.uuid4().hex,
            "org_id": org,
            "agent_id": "probe",
            "key_mode": "live",
            "ts": ts or datetime.now(UTC).isoformat(),
            "type": "llm.usage",
            "model": "gpt-4o-mini",
            "input_tokens": tokens,
            "output_tokens": 0,
        }
    )


async def _load(bootstrap: str, rate: int, seconds: float, limit: int | None = None) -> int:
    """Background traffic at `rate` events/s across 50 orgs, in 10 ms ticks, for at most
    `seconds` (or `limit` events); prints the events sent so far and its own CPU seconds,
    once a second; returns the events sent.

    Each tick's events go out as one record batch per partition, each event on its org's
    partition (as a keyed send would put it): a send per event would cost this process half
    a core at 10,000 events/s, taken from the two cores Tally is measured on, where agent
    runtimes would run on machines of their own."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    partitions = len(await producer.partitions_for(EVENTS_TOPIC))
    orgs = [(org, org.encode(), partition_of(org, partitions)) for org in LOAD_ORGS]
    run = uuid.uuid4().hex[:12]
    sent, started, reported = 0, time.perf_counter(), 0.0
    try:
        while (elapsed := time.perf_counter() - started) < seconds and sent != limit:
            upto = min(int(elapsed * rate), sent + rate)  # at most a second's worth a tick
            if limit is not None:
                upto = min(upto, limit)
            ts = datetime.now(UTC).isoformat()
            batches: dict[int, Any] = {}
            for i in range(sent, upto):
                org, key, partition = orgs[i % len(orgs)]
                value = _event(org, 1, event_id=f"load-{run}-{i}", ts=ts)
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    await producer.send_batch(batch, EVENTS_TOPIC, partition=partition)
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            for partition, batch in batches.items():
                await producer.send_batch(batch, EVENTS_TOPIC, partition=partition)
            sent = max(sent, upto)
            if elapsed - reported >= 1:
                print(sent, round(time.process_time(), 3), flush=True)
                reported = elapsed
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
    return sent


class _Load:
    """The background load in a process of its own. `running()` waits for its first report
    (a second of sending); `stop()` waits for a report after it if there is none yet (a
    short probe), then returns the events/s it sent from the first on and the share of a
    core it used doing so, so that the process's start-up counts in neither."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.first: tuple[float, int, float] | None = None  # (when, sent, cpu) first reported
        self.last: tuple[float, int, float] | None = None
        self._started = asyncio.Event()
        self._again = asyncio.Event()  # a report after the first
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, bootstrap: str, rate: int) -> _Load:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "commands.bench.freshness",
            bootstrap,
            str(rate),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            sent, cpu = line.split()
            self.last = (time.perf_counter(), int(sent), float(cpu))
            if self.first is None:
                self.first = self.last
                self._started.set()
            else:
                self._again.set()

    async def running(self, timeout: float = 60) -> None:
        await asyncio.wait_for(self._started.wait(), timeout)

    async def stop(self) -> tuple[int, float]:
        if self.first is not None and self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._again.wait(), 3)
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        self._reader.cancel()
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return 0, 0.0
        elapsed = self.last[0] - self.first[0]
        sent, cpu = self.last[1] - self.first[1], self.last[2] - self.first[2]
        return round(sent / elapsed), round(cpu / elapsed, 2)


def _delivery(future: asyncio.Future[Any]) -> str:
    if not future.done():
        return "not acknowledged by the broker"
    if future.cancelled() or future.exception():
        return f"not delivered ({'cancelled' if future.cancelled() else future.exception()!r})"
    meta = future.result()
    return f"at offset {meta.offset} of partition {meta.partition}"


async def freshness(
    tally: Tally, samples: int, background_rate: int, broker_pid: int | None = None
) -> dict[str, float]:
    """p50/p99 milliseconds from send to visible in the counter table, and the cores the
    broker used while probing (`broker_cpu`; 0.0 when its process is not known)."""
    assert tally.services is not None and tally.settings.bootstrap_servers
    table = tally.services.counters
    producer = AIOKafkaProducer(
        bootstrap_servers=tally.settings.bootstrap_servers, acks="all", linger_ms=0
    )
    await producer.start()
    bootstrap = tally.settings.bootstrap_servers
    load = await _Load.start(bootstrap, background_rate) if background_rate else None
    org = f"probe-{uuid.uuid4().hex[:8]}"
    latencies = []
    load_eps, load_cpu = 0, 0.0
    broker_cpu = 0.0
    try:
        if load:
            await load.running()
        probing_from = time.perf_counter()
        broker_from = cpu_seconds(broker_pid) if broker_pid else None
        expected = 0
        for i in range(samples):
            day = counters.epoch_day(datetime.now(UTC))
            expected += i + 1
            started = time.perf_counter()
            delivery = await producer.send(EVENTS_TOPIC, _event(org, i + 1), key=org.encode())
            while (seen := table.total(org, counters.TOKENS, (day - 1, day))) != expected:
                failed = delivery.done() and (delivery.cancelled() or delivery.exception())
                if failed or time.perf_counter() - started > PROBE_TIMEOUT_S:
                    raise RuntimeError(
                        f"probe {i + 1} of {samples} not counted after"
                        f" {time.perf_counter() - started:.1f}s: its org's quota shows {seen}"
                        f" tokens, {expected} expected; the probe is {_delivery(delivery)}"
                    )
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        broker_to = cpu_seconds(broker_pid) if broker_pid else None
        if broker_from is not None and broker_to is not None:
            broker_cpu = round((broker_to - broker_from) / (time.perf_counter() - probing_from), 2)
    finally:
        if load:
            load_eps, load_cpu = await load.stop()
        await producer.stop()
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "load_eps": load_eps,
        "load_cpu": load_cpu,  # cores the load generator itself used
        "broker_cpu": broker_cpu,
    }


if __name__ == "__main__":  # the background load: BOOTSTRAP RATE
    asyncio.run(_load(sys.argv[1], int(sys.argv[2]), seconds=600))
