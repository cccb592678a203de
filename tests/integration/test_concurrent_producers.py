"""Many producers on one partition at once, as agent runtimes are: every event counted once.

The embedded broker can answer a fetch with the batch one producer wrote after a batch
another producer is still writing; a worker that moved on from there lost those events
(`streams.holes`). This test makes such fetches likely: producers send one-event batches to
one partition as fast as they can while the worker tails it, on a broker and a database of
the test's own: the broker's work per fetch grows with the record batches it holds, and
these tens of thousands stay out of the session broker that later tests share.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest_asyncio
from aiokafka import AIOKafkaProducer

from commands.runtime import Tally
from tally.broker import EmbeddedBroker
from tally.config import EVENTS_TOPIC
from tally.domain import counters
from tally.store import Store
from tests.backends import drop_database, fresh_database
from tests.conftest import eventually, rows_reach, running
from tests.factories import make_event, orgs_on, wire

PRODUCERS = 4
SECONDS = 8.0


@pytest_asyncio.fixture
async def own(stack: Tally, tmp_path: Path) -> AsyncIterator[Tally]:
    """Worker and API on a broker of their own and a fresh database of the session's chDB."""
    assert stack.store is not None
    admin = Store(stack.store.url)
    await admin.start()
    url = await fresh_database(admin, "race")
    try:
        async with EmbeddedBroker() as broker:
            settings = stack.settings.model_copy(
                update={
                    "bootstrap_servers": broker.bootstrap_servers,
                    "clickhouse_url": url,
                    "data_dir": tmp_path,
                    "log_epoch": f"race-{uuid.uuid4().hex[:8]}",
                }
            )
            async with running(settings) as tally:
                yield tally
    finally:
        await drop_database(admin, url)
        await admin.stop()


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


async def test_events_from_producers_racing_on_one_partition_are_each_counted_once(own: Tally):
    assert own.services is not None and own.worker is not None
    table = own.services.counters
    partitions = own.worker.partitions
    orgs = orgs_on(5 % partitions, partitions, count=PRODUCERS, prefix="race")
    until = time.monotonic() + SECONDS
    bootstrap = own.settings.bootstrap_servers
    assert bootstrap is not None
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
        await rows_reach(own, org, n)
