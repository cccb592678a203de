"""Many producers on one partition at once, as agent runtimes are: every event counted once.

The embedded broker can answer a fetch with the batch one producer wrote after a batch
another producer is still writing; a worker that moved on from there lost those events
(`streams.holes`). This test makes such fetches likely: producers send one-event batches to
one partition as fast as they can while the worker tails it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from tally.config import EVENTS_TOPIC
from tally.domain import counters
from tests.conftest import eventually, rows_reach
from tests.factories import make_event, orgs_on, wire

PRODUCERS = 4
SECONDS = 8.0


async def _produce(bootstrap: str, org: str, until: float) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent = 0
    try:
        while time.monotonic() < until:
            # A few one-event batches in flight at once, then wait for them.
            futures = [
                await producer.send(
                    EVENTS_TOPIC,
                    wire(make_event(org_id=org, input_tokens=1, output_tokens=0)),
                    key=org.encode(),
                )
                for _ in range(4)
            ]
            await asyncio.gather(*futures)
            sent += len(futures)
    finally:
        await producer.stop()
    return sent


async def test_events_from_producers_racing_on_one_partition_are_each_counted_once(stack):
    table = stack.services.counters
    partitions = stack.worker.partitions
    orgs = orgs_on(5 % partitions, partitions, count=PRODUCERS, prefix="race")
    until = time.monotonic() + SECONDS
    bootstrap = stack.settings.bootstrap_servers
    sent = await asyncio.gather(*(_produce(bootstrap, org, until) for org in orgs))
    day = counters.epoch_day(datetime.now(UTC))

    def totals() -> dict[str, int]:
        return {org: table.total(org, counters.TOKENS, (day - 1, day)) for org in orgs}

    async def all_counted() -> bool:
        return totals() == dict(zip(orgs, sent, strict=True))

    try:
        await eventually(all_counted, timeout=60)
    except AssertionError:
        sent_by_org = dict(zip(orgs, sent, strict=True))
        raise AssertionError(f"sent {sent_by_org}, counted {totals()}") from None
    for org, n in zip(orgs, sent, strict=True):
        await rows_reach(stack, org, n)
