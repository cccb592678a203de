"""Freshness: from emitting one event to the quota read showing it.

The background load comes from a process of its own, as agent runtimes are: producing
10,000 events/s costs a good part of a core, which a runtime pays, not the worker.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from tally.bench.stats import percentile
from tally.broker import die_with_parent
from tally.config import EVENTS_TOPIC
from tally.domain import counters
from tally.runtime import Tally


def _event(org: str, tokens: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "org_id": org,
            "agent_id": "probe",
            "key_mode": "live",
            "ts": datetime.now(UTC).isoformat(),
            "type": "llm.usage",
            "model": "gpt-4o-mini",
            "input_tokens": tokens,
            "output_tokens": 0,
        }
    )


async def _load(bootstrap: str, rate: int, seconds: float) -> None:
    """Background traffic at `rate` events/s across 50 orgs, in 10 ms ticks, for at most
    `seconds`; prints the events sent so far once a second."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent, started, reported = 0, time.perf_counter(), 0.0
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate)
            for i in range(sent, min(due, sent + rate)):  # at most a second's worth a tick
                org = f"load-org-{i % 50}"
                await producer.send(EVENTS_TOPIC, _event(org, 1), key=org.encode())
            sent = max(sent, min(due, sent + rate))
            if elapsed - reported >= 1:
                print(sent, flush=True)
                reported = elapsed
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()


class _Load:
    """The background load in a process of its own; `stop()` returns the events/s it sent."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.sent = 0
        self.started = time.perf_counter()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, bootstrap: str, rate: int) -> _Load:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tally.bench.freshness",
            bootstrap,
            str(rate),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.sent = int(line)

    async def stop(self) -> int:
        rate = self.sent / (time.perf_counter() - self.started)
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        self._reader.cancel()
        return round(rate)


async def freshness(tally: Tally, samples: int, background_rate: int) -> dict[str, float]:
    """p50/p99 milliseconds from send to visible in the counter table."""
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
    load_eps = 0
    try:
        await asyncio.sleep(1.0 if load else 0)
        expected = 0
        for i in range(samples):
            day = counters.epoch_day(datetime.now(UTC))
            expected += i + 1
            started = time.perf_counter()
            await producer.send(EVENTS_TOPIC, _event(org, i + 1), key=org.encode())
            while table.total(org, counters.TOKENS, (day - 1, day)) != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
    finally:
        if load:
            load_eps = await load.stop()
        await producer.stop()
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "load_eps": load_eps,
    }


if __name__ == "__main__":  # the background load: BOOTSTRAP RATE
    asyncio.run(_load(sys.argv[1], int(sys.argv[2]), seconds=600))
