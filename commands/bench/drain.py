"""Draining a backlog: the machine's ceiling and Tally, on the same broker and events."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from commands.bench.workload import Workload
from commands.runtime import Tally
from tally.config import EVENTS_TOPIC
from tally.domain import counters


async def produce(bootstrap: str, workload: Workload) -> float:
    """Produce the backlog; returns events/s."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value in workload.messages:
            await producer.send(EVENTS_TOPIC, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return len(workload.messages) / (time.perf_counter() - started)


async def ceiling(bootstrap: str, partitions: int, total: int, timeout: float = 600) -> float:
    """A plain aiokafka consumer: JSON decode and a dict update per event (events/s)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    tps = [TopicPartition(EVENTS_TOPIC, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    tokens: Counter[str] = Counter()
    seen = 0
    next_offset = dict.fromkeys(range(partitions), 0)
    started = time.perf_counter()
    try:
        while seen < total:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"the ceiling read {seen} of {total} events in {timeout:.0f}s")
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, msgs in batch.items():
                start = next_offset[tp.partition]  # a fetch may repeat a batch's head
                for m in msgs:
                    if m.offset < start:
                        continue
                    event = orjson.loads(m.value)
                    tokens[event["org_id"]] += event.get("input_tokens", 0)
                    seen += 1
                if msgs:
                    next_offset[tp.partition] = max(start, msgs[-1].offset + 1)
    finally:
        elapsed = time.perf_counter() - started
        await consumer.stop()
    return total / elapsed


async def tally_drain(tally: Tally, workload: Workload, timeout: float = 600) -> float:
    """Start the worker on the backlog; events/s until every org's counter is exact."""
    await tally.start_worker()
    assert tally.worker is not None and tally.services is not None
    await asyncio.wait_for(tally.worker.ready.wait(), 120)
    started = time.perf_counter()
    table = tally.services.counters
    today = counters.epoch_day(datetime.now(UTC))
    while True:
        exact = all(
            table.total(org, counters.TOKENS, (today - 1, today)) == workload.tokens[org]
            for org in workload.orgs
        )
        if exact:
            return len(workload.messages) / (time.perf_counter() - started)
        if time.perf_counter() - started > timeout:
            raise TimeoutError("the counters did not become exact")
        await asyncio.sleep(0.01)


async def caught_up(tally: Tally, timeout: float = 600) -> float:
    """Wait until the worker has stored everything on the broker; returns the seconds."""
    assert tally.services is not None
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        _, lag = tally.services.counters.freshness()
        if lag == 0:
            return round(time.perf_counter() - started, 2)
        await asyncio.sleep(0.1)
    raise TimeoutError("the worker did not catch up")
