"""Freshness: from emitting one event to the quota read showing it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from tally.bench.stats import percentile
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


async def _load(producer: AIOKafkaProducer, rate: int, stop: asyncio.Event) -> int:
    """Background traffic at `rate` events/s across 50 orgs, in 10 ms ticks."""
    sent, started = 0, time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - started) * rate)
        for i in range(sent, due):
            org = f"load-org-{i % 50}"
            await producer.send(EVENTS_TOPIC, _event(org, 1), key=org.encode())
        sent = max(sent, due)
        await asyncio.sleep(0.01)
    return sent


async def freshness(tally: Tally, samples: int, background_rate: int) -> dict[str, float]:
    """p50/p99 milliseconds from send to visible in the counter table."""
    assert tally.services is not None and tally.settings.bootstrap_servers
    table = tally.services.counters
    producer = AIOKafkaProducer(
        bootstrap_servers=tally.settings.bootstrap_servers, acks="all", linger_ms=0
    )
    await producer.start()
    stop = asyncio.Event()
    load = asyncio.create_task(_load(producer, background_rate, stop)) if background_rate else None
    org = f"probe-{uuid.uuid4().hex[:8]}"
    latencies = []
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
        stop.set()
        if load:
            with contextlib.suppress(Exception):
                await load
        await producer.stop()
    return {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}
