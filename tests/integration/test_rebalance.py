"""Many workers: partitions move between workers on rebalance and the counters stay exact.

Two `Worker`s in this process join one consumer group on a broker of their own and share one
store, as two `tally worker` replicas share Kafka and ClickHouse. Worker A starts alone, B
joins (partitions move to B), A stops (they come back to B), while events for many orgs,
producer retries and sessions flow. After every move each worker's state must be exactly
what the store rebuilds for the partitions it owns, and at the end the counters on
`usage.counters` (read with the API's CounterTable) and the stored totals must be exact
for every org.

Backends: the embedded broker with a fresh database in the session's chDB engine (always),
and Kafka with a ClickHouse server in Docker (marker `docker`; skips where Docker is missing).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from api.counter_table import CounterTable
from streams.batch import Record, apply, process
from streams.sink import ClickHouseSink
from streams.worker import Worker
from tally.config import EVENTS_TOPIC, Settings
from tally.domain.counters import CounterKey
from tally.domain.pricing import Pricer
from tally.store import Store
from tally.topics import ensure_topics
from tests.backends import TOPOLOGIES, Topology, drop_database, fresh_database, topology
from tests.conftest import eventually
from tests.factories import make_event, orgs_on, wire
from tests.streaming import BOOK, Traffic, expected, owned, states_match_the_store, until

pytestmark = pytest.mark.slow

PARTITIONS = 6
ALL = set(range(PARTITIONS))


@pytest.fixture(params=TOPOLOGIES)
def parts(request: pytest.FixtureRequest) -> Iterator[Topology]:
    chdb_url = request.getfixturevalue("stack").store.url if request.param == "embedded" else ""
    with topology(request.param, chdb_url) as t:
        yield t


def orgs_covering_every_partition(per_partition: int) -> list[str]:
    """Org ids such that every partition holds `per_partition` of them (keyed by org)."""
    partitioner, parts = DefaultPartitioner(), list(range(PARTITIONS))
    found: dict[int, list[str]] = {p: [] for p in parts}
    while any(len(v) < per_partition for v in found.values()):
        org = f"rb-{uuid.uuid4().hex[:10]}"
        p = partitioner(org.encode(), parts, parts)
        if len(found[p]) < per_partition:
            found[p].append(org)
    return [org for p in parts for org in found[p]]


async def test_partitions_move_between_workers_and_counters_stay_exact(parts: Topology):
    orgs = orgs_covering_every_partition(per_partition=4)
    await ensure_topics(parts.bootstrap, PARTITIONS)
    admin = Store(parts.admin_url)
    await admin.start()
    store_url = await fresh_database(admin, "rebalance")
    settings = Settings(
        bootstrap_servers=parts.bootstrap,
        clickhouse_url=store_url,
        group_id=f"rebalance-{uuid.uuid4().hex[:8]}",
        log_epoch=f"rebalance-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=parts.session_timeout_ms,
        batch_timeout_ms=20,
        batch_max_records=200,  # many small batches: more of them in flight at a move
    )
    stores = [Store(store_url) for _ in range(3)]  # one per worker, one to check
    for s in stores:
        await s.start()
    check = stores[2]
    a, b = (
        Worker(settings, ClickHouseSink(s, settings.log_epoch, settings.dedup_window_s), BOOK)
        for s in stores[:2]
    )
    table = CounterTable(parts.bootstrap)
    traffic = Traffic(parts.bootstrap, orgs)
    try:
        await table.start()
        await traffic.start()

        await a.start()
        await until(lambda: owned(a) == ALL == set(a.states), timeout=40)
        assert a.partitions == PARTITIONS  # from the group leader's assignment
        await until(lambda: a.processed > 0, timeout=20)

        # B joins: some partitions move from A to B.
        await b.start()

        def split() -> bool:
            oa, ob = owned(a), owned(b)
            return bool(oa and ob and not oa & ob and oa | ob == ALL) and (
                set(a.states) == oa and set(b.states) == ob
            )

        await until(split, timeout=40)
        assert a.partitions == b.partitions == PARTITIONS
        await until(lambda: b.processed > 0, timeout=20)
        # Quiet for a moment: the live state of every partition is what the store rebuilds.
        await traffic.pause()
        for w in (a, b):
            await eventually(lambda w=w: states_match_the_store(w, check), timeout=20)
        traffic.flowing.set()
        await asyncio.sleep(1)

        # A leaves: its partitions come back to B.
        processed_by_b = b.processed
        await a.stop()
        await until(lambda: owned(b) == ALL == set(b.states), timeout=40)
        await until(lambda: b.processed > processed_by_b, timeout=20)
        await asyncio.sleep(1)
        await traffic.pause()
        await eventually(lambda: states_match_the_store(b, check), timeout=20)

        want, rows, billable = expected(traffic.sent)
        ours = set(orgs)

        async def stored_exactly() -> bool:
            got = await check.query(
                "SELECT org_id, count(), uniqExact(event_id), sum(billable) FROM events"
                " WHERE has({orgs:Array(String)}, org_id) GROUP BY org_id",
                {"orgs": orgs},
            )
            return {r[0]: (r[1], r[2], r[3]) for r in got} == {
                o: (rows[o], rows[o], billable[o]) for o in orgs
            }

        def published() -> dict[CounterKey, int]:
            return {k: v for k, v in table.values.items() if k[0] in ours and v}

        await eventually(stored_exactly, timeout=30)
        await until(lambda: published() == want, timeout=30)
        assert published() == want
        assert len(traffic.sent) > len({e["event_id"] for e in traffic.sent})  # retries sent
        assert a.forwarded == b.forwarded == 0  # keyed by org_id: every event was at home
    finally:
        await traffic.stop()
        for w in (a, b):
            await w.stop()
        await table.stop()
        for s in stores:
            await s.stop()
        await drop_database(admin, store_url)
        await admin.stop()


async def test_partitions_gained_while_the_store_is_down_are_counted_once_it_is_back(
    parts: Topology,
):
    """A rebalance can come while ClickHouse is briefly unreachable (a restart, a deploy).
    The worker then cannot rebuild the partitions it gains; once the store answers again,
    every event on them must still be stored and counted."""
    orgs = orgs_covering_every_partition(per_partition=2)
    await ensure_topics(parts.bootstrap, PARTITIONS)
    admin = Store(parts.admin_url)
    await admin.start()
    store_url = await fresh_database(admin, "outage")
    settings = Settings(
        bootstrap_servers=parts.bootstrap,
        clickhouse_url=store_url,
        group_id=f"outage-{uuid.uuid4().hex[:8]}",
        log_epoch=f"outage-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=parts.session_timeout_ms,
        batch_timeout_ms=20,
    )
    stores = [Store(store_url) for _ in range(3)]  # one per worker, one to check
    for s in stores:
        await s.start()
    check = stores[2]
    a, b = (
        Worker(settings, ClickHouseSink(s, settings.log_epoch, settings.dedup_window_s), BOOK)
        for s in stores[:2]
    )
    producer = AIOKafkaProducer(bootstrap_servers=parts.bootstrap, acks="all")
    await producer.start()
    try:
        await a.start()
        await until(lambda: owned(a) == ALL == set(a.states), timeout=40)
        await stores[0].stop()  # A's store becomes unreachable
        await b.start()  # B joins: A gives up every partition and gains some back
        await until(lambda: bool(owned(a)) and bool(owned(b)), timeout=40)
        await until(lambda: set(b.states) == owned(b), timeout=20)
        await stores[0].start()  # the store is back
        sent = [make_event(org_id=org, input_tokens=10, output_tokens=1) for org in orgs]
        for e in sent:
            await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
        await producer.flush()

        async def all_stored() -> list[tuple[Any, ...]]:
            rows = await check.query(
                "SELECT org_id, count() FROM events WHERE has({orgs:Array(String)}, org_id)"
                " GROUP BY org_id ORDER BY org_id",
                {"orgs": orgs},
            )
            return rows if rows == [(org, 1) for org in sorted(orgs)] else []

        try:
            await eventually(all_stored, timeout=12)
        except AssertionError:
            missing = sorted(owned(a) - set(a.states))
            raise AssertionError(
                f"events on partitions {missing} were not stored: worker A owns "
                f"{sorted(owned(a))} but holds state for {sorted(a.states)} only (its "
                "rebuild failed while the store was down and was never retried)"
            ) from None
        assert set(a.states) == owned(a)
    finally:
        await producer.stop()
        for w in (a, b):
            await w.stop()
        for s in stores:
            await s.stop()
        await drop_database(admin, store_url)
        await admin.stop()


async def test_a_broker_reset_seen_by_two_workers_is_read_once(stack):
    """Kafka rebuilt empty while ClickHouse keeps its data: every worker finds its partitions'
    logs behind the stored marks and reads the new log from its start under a new log epoch
    (`Worker._log_reset`). With two workers, a partition that moves from one to the other
    after that must go on from where the first left it, not be read again from offset 0.

    No broker is needed to show it: each worker's sink does what `_log_reset` makes it do.
    A stored the new log's events two days ago, beyond the one-day dedup window, as happens
    once the rebuilt cluster has run for a while: a re-read counts them again."""
    admin = Store(stack.store.url)
    await admin.start()
    store_url = await fresh_database(admin, "reset")
    store = Store(store_url)
    await store.start()
    base, p, pricer = f"reset-{uuid.uuid4().hex[:8]}", 2, Pricer(BOOK)
    (org,) = orgs_on(p, PARTITIONS, prefix="reset")  # an org that partition p counts
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    then = two_days_ago.isoformat()  # the new log's events, made just before A read them
    log = [Record(i, wire(make_event(org_id=org, ts=then))) for i in range(10)]  # the new log
    try:
        a, b = ClickHouseSink(store, base, 86_400), ClickHouseSink(store, base, 86_400)
        epoch_a = a.new_epoch()  # worker A found its partitions reset
        epoch_b = b.new_epoch()  # so did worker B, for its own partitions

        state = await a.load(p, PARTITIONS)  # A owns p and reads the new log from its start
        state.epoch, state.next_offset = epoch_a, 0  # what `_log_reset` does
        result = process(state, log, pricer, two_days_ago, state.epoch)
        await a.write(result.rows, {p: (result.epoch, result.last_offset + 1, result.last_crc)})
        apply(state, result)

        state = await b.load(p, PARTITIONS)  # a rebalance gives p to B, which goes on from its mark
        todo = [r for r in log if r.offset >= state.next_offset]
        result = process(state, todo, pricer, datetime.now(UTC), state.epoch)
        await b.write(result.rows, {p: (result.epoch, result.last_offset + 1, result.last_crc)})

        rows = await store.query(
            "SELECT count(), uniqExact(event_id) FROM events WHERE org_id = {o:String}", {"o": org}
        )
        assert rows == [(10, 10)], (
            f"stored {rows[0][0]} rows for 10 events: worker B read partition {p} again "
            f"from offset {state.next_offset} under epoch {state.epoch!r} (its own reset was "
            f"{epoch_b!r}), blind to the marks worker A stored under {epoch_a!r}"
        )
    finally:
        await store.stop()
        await drop_database(admin, store_url)
        await admin.stop()
