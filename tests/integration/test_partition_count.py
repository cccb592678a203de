"""Raising the partition count of usage.events: counters and rollups stay exact.

The stream runs on 4 partitions under one worker; then, with the workers stopped, the topic
gets 6 partitions and two workers take it over, as docs/deploy.md's procedure does. Most orgs
now map to another partition than the one holding their history. Traffic goes on keyed by
org_id under the new count; producer retries of events counted before the change arrive on
the new partitions; a backlog the first worker never read waits on the old ones; and a
producer still on the old count keeps sending there. Every org's quota counters (as the API
reads them from usage.counters) and its stored events and rollups must come out exact: to
the token and the micro-unit, each event once.

Tansu (the embedded broker) cannot add partitions to a topic: it does not offer the
CreatePartitions request. Kafka's `kafka-topics.sh --alter --partitions 6` keeps every
partition's log and adds empty ones; the test builds exactly that state on a second
embedded broker: each of the 4 partitions copied message by message (same offsets, same
bytes, so the workers' stored marks and their log checks hold), plus 2 empty partitions.
The workers resume there under the same log epoch, as they would on the altered topic.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition

from api.counter_table import CounterTable
from commands.ops import kafka
from streams.decode import decode
from streams.sink import ClickHouseSink
from streams.worker import Worker
from tally.broker import EmbeddedBroker
from tally.config import EVENTS_TOPIC, Settings
from tally.domain.partitioning import partition_of
from tally.domain.pricing import Pricer
from tally.domain.usage import measure
from tally.store import Store
from tally.topics import ensure_topics
from tests.backends import drop_database, fresh_database
from tests.conftest import eventually
from tests.factories import make_event, orgs_across, wire
from tests.streaming import BOOK, Traffic, expected, owned, states_match_the_store, until

pytestmark = pytest.mark.slow

BEFORE, AFTER = 4, 6


@pytest_asyncio.fixture
async def store_url(stack: Any) -> AsyncIterator[str]:
    """A fresh database in the session's chDB engine, shared by every worker of the test."""
    admin = Store(stack.store.url)
    await admin.start()
    url = await fresh_database(admin, "raise")
    try:
        yield url
    finally:
        await drop_database(admin, url)
        await admin.stop()


def worker(settings: Settings, store: Store) -> Worker:
    return Worker(
        settings, ClickHouseSink(store, settings.log_epoch, settings.dedup_window_s), BOOK
    )


def drained(w: Worker) -> bool:
    """The worker has stored everything on the broker for the partitions it owns."""
    consumer = w._consumer
    if consumer is None or not w.states:
        return False
    for p, state in w.states.items():
        high = consumer.highwater(TopicPartition(EVENTS_TOPIC, p))
        if high is None or high != state.next_offset:
            return False
    return True


async def copy_log(source: str, target: str) -> dict[int, int]:
    """Copy every partition of usage.events on `source` into the same partition on `target`,
    in order, and check each message landed at its own offset; returns the log ends."""
    async with kafka.reader(source) as consumer:
        ranges = await kafka.log_ranges(consumer, EVENTS_TOPIC)
        producer = AIOKafkaProducer(bootstrap_servers=target, acks="all", linger_ms=5)
        await producer.start()
        try:
            sent = []
            async for batch in kafka.scan(consumer, EVENTS_TOPIC, ranges):
                for m in batch:
                    future = await producer.send(
                        EVENTS_TOPIC,
                        m.value,
                        key=m.key,
                        partition=m.partition,
                        headers=list(m.headers),
                    )
                    sent.append((m.partition, m.offset, future))
            for p, offset, future in sent:
                meta = await future
                assert (meta.partition, meta.offset) == (p, offset)
        finally:
            await producer.stop()
    assert all(low == 0 for low, _ in ranges.values())
    return {p: high for p, (_, high) in ranges.items()}


async def send(producer: AIOKafkaProducer, events: list[dict[str, Any]], **how: Any) -> None:
    for e in events:
        await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode(), **how)
    await producer.flush()


async def test_raising_the_partition_count_keeps_every_org_exact(store_url: str):
    orgs = [org for p in range(BEFORE) for org in orgs_across(p, BEFORE, AFTER, prefix="raise")]
    moved = [org for org in orgs if partition_of(org, BEFORE) != partition_of(org, AFTER)]
    assert 0 < len(moved) < len(orgs)
    settings = Settings(
        bootstrap_servers="unset",
        clickhouse_url=store_url,
        group_id=f"raise-{uuid.uuid4().hex[:8]}",
        log_epoch=f"raise-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=3_000,
        batch_timeout_ms=20,
        batch_max_records=200,
    )
    stores = [Store(store_url) for _ in range(4)]  # one per worker, one to check
    for s in stores:
        await s.start()
    check = stores[3]
    # The log copied to a new broker stands for one Kafka cluster whose partition count grew:
    # one cluster id, not an embedded one (whose restart is a new, empty log).
    kafka_like = f"kafka-like-{uuid.uuid4().hex[:8]}"
    old, new = EmbeddedBroker(cluster_id=kafka_like), EmbeddedBroker(cluster_id=kafka_like)
    old.start()
    new.start()
    workers: list[Worker] = []
    try:
        # -- before: 4 partitions, one worker -----------------------------------------
        await ensure_topics(old.bootstrap_servers, BEFORE)
        first = worker(
            settings.model_copy(update={"bootstrap_servers": old.bootstrap_servers}), stores[0]
        )
        workers.append(first)
        traffic = Traffic(old.bootstrap_servers, orgs)
        await first.start()
        await traffic.start()
        await until(lambda: first.partitions == BEFORE and owned(first) == set(range(BEFORE)), 40)
        await until(lambda: first.processed > 200, 30)
        await traffic.pause()
        await until(lambda: drained(first), 30)
        counted_before = list(traffic.sent)
        await first.stop()
        # A backlog the worker never read: the operator did not wait for the lag to be 0.
        traffic.flowing.set()
        await asyncio.sleep(0.5)
        await traffic.pause()
        await traffic.stop()
        backlog = traffic.sent[len(counted_before) :]
        assert backlog

        # -- the change: the same logs on 6 partitions ----------------------------------
        await ensure_topics(new.bootstrap_servers, AFTER)
        ends = await copy_log(old.bootstrap_servers, new.bootstrap_servers)
        assert set(ends) == set(range(BEFORE)) and sum(ends.values()) == len(traffic.sent)
        old.stop()

        # -- after: 6 partitions, two workers --------------------------------------------
        bootstrap = new.bootstrap_servers
        table = CounterTable(bootstrap)
        await table.start()
        after = settings.model_copy(update={"bootstrap_servers": bootstrap})
        a, b = worker(after, stores[1]), worker(after, stores[2])
        workers += [a, b]
        await a.start()
        await b.start()

        def split() -> bool:
            oa, ob = owned(a), owned(b)
            return bool(oa and ob and not oa & ob and oa | ob == set(range(AFTER))) and (
                set(a.states) == oa and set(b.states) == ob
            )

        await until(split, 40)
        assert a.partitions == b.partitions == AFTER

        later = Traffic(bootstrap, orgs, first_round=traffic.rounds)
        stale = [make_event(org_id=org, input_tokens=333, output_tokens=7) for org in orgs]
        retried = counted_before[::7] + backlog[::3]  # sent again, now under the new count
        await later.start()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await send(producer, retried)
            # A producer still on the old count: each org to its partition of 4.
            for e in stale:
                await send(producer, [e], partition=partition_of(e["org_id"], BEFORE))
        finally:
            await producer.stop()
        await asyncio.sleep(2)
        await later.pause()
        await later.stop()

        sent = traffic.sent + retried + stale + later.sent
        want, rows, billable = expected(sent)
        pricer = Pricer(BOOK)
        cost: Counter[str] = Counter()
        for e in {e["event_id"]: e for e in sent}.values():
            cost[e["org_id"]] += measure(decode(wire(e)), pricer).cost_micros

        async def stored_exactly() -> bool:
            """Events stored once each, and the daily rollup (reports, credits) agrees."""
            events = await check.query(
                "SELECT org_id, count(), uniqExact(event_id), sum(billable), sum(cost_micros)"
                " FROM events GROUP BY org_id"
            )
            daily = await check.query(
                "SELECT org_id, sum(events), sum(billable), sum(cost_micros) FROM usage_daily"
                " GROUP BY org_id"
            )
            return {r[0]: r[1:] for r in events} == {
                o: (rows[o], rows[o], billable[o], cost[o]) for o in orgs
            } and {r[0]: r[1:] for r in daily} == {o: (rows[o], billable[o], cost[o]) for o in orgs}

        def published() -> dict[Any, int]:
            return {k: v for k, v in table.values.items() if k[0] in set(orgs) and v}

        await eventually(stored_exactly, timeout=40)
        await until(lambda: published() == want, 40)
        for w in (a, b):
            await eventually(lambda w=w: states_match_the_store(w, check), timeout=20)

        # Each org is counted by one partition, the one it maps to among 6.
        for org in orgs:
            holders = {
                (w_i, p)
                for w_i, w in enumerate((a, b))
                for p, state in w.states.items()
                if any(k[0] == org for k in state.counters)
            }
            assert len(holders) == 1 and holders.pop()[1] == partition_of(org, AFTER), org
        # What arrived where its org is not kept was forwarded once: the backlog of the
        # orgs that moved, and the old-count producer's events of those orgs.
        misrouted = [e for e in backlog + stale if e["org_id"] in moved]
        assert a.forwarded + b.forwarded == len(misrouted) > 0
        assert len(retried) > 0 and published() == want
    finally:
        for w in workers:
            await w.stop()
        if "table" in locals():
            await table.stop()
        for s in stores:
            await s.stop()
        old.stop()
        new.stop()
