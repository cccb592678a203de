"""Sessions are leases, on the real embedded broker and chDB: a session with no end is freed
when its lease lapses, the lapse is stored once as an end with reason `expired`, and the
count and the leases stay right while partitions move between workers (a worker's state is
always what the store rebuilds)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from api.counter_table import CounterTable
from streams.sink import ClickHouseSink
from streams.worker import Worker
from tally.config import EVENTS_TOPIC, Settings
from tally.domain import counters
from tally.store import Store
from tally.topics import ensure_topics
from tests.backends import drop_database, fresh_database, topology
from tests.conftest import eventually
from tests.factories import make_event, orgs_on, wire
from tests.streaming import BOOK, owned, states_match_the_store, until

pytestmark = pytest.mark.slow

PARTITIONS = 2
LEASE_S = 3


async def test_sessions_without_an_end_are_freed_when_their_lease_lapses_across_a_rebalance(
    stack,
):
    with topology("embedded", stack.store.url) as parts:
        await ensure_topics(parts.bootstrap, PARTITIONS)
        admin = Store(parts.admin_url)
        await admin.start()
        store_url = await fresh_database(admin, "leases")
        settings = Settings(
            bootstrap_servers=parts.bootstrap,
            clickhouse_url=store_url,
            group_id=f"leases-{uuid.uuid4().hex[:8]}",
            log_epoch=f"leases-{uuid.uuid4().hex[:8]}",
            session_timeout_ms=parts.session_timeout_ms,
            batch_timeout_ms=20,
            session_lease_s=LEASE_S,
        )
        stores = [Store(store_url) for _ in range(3)]
        for s in stores:
            await s.start()
        check = stores[2]
        a, b = (
            Worker(settings, ClickHouseSink(s, settings.log_epoch, settings.dedup_window_s), BOOK)
            for s in stores[:2]
        )
        orgs = [orgs_on(p, PARTITIONS, prefix="lease")[0] for p in range(PARTITIONS)]
        table = CounterTable(parts.bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=parts.bootstrap, acks="all")
        beating = True

        async def send(*events: dict) -> None:
            for e in events:
                await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
            await producer.flush()

        async def heartbeats() -> None:
            while beating:
                await send(
                    *(make_event("session.heartbeat", org_id=o, session_id="kept") for o in orgs)
                )
                await asyncio.sleep(0.5)

        def active(org: str) -> int:
            return table.values.get((org, counters.SESSIONS, 0), 0)

        try:
            await table.start()
            await producer.start()
            await a.start()
            await until(lambda: owned(a) == set(range(PARTITIONS)) == set(a.states), timeout=40)
            # Per org: three sessions the runtime never ends (it crashed), one it keeps alive.
            await send(
                *(
                    make_event("session.started", org_id=o, session_id=s, run_id=f"run-{s}")
                    for o in orgs
                    for s in ("lost-1", "lost-2", "lost-3", "kept")
                )
            )
            beat = asyncio.create_task(heartbeats())
            await until(lambda: all(active(o) == 4 for o in orgs), timeout=20)
            # B joins while the leases run: a partition moves, and is rebuilt from the store.
            await b.start()
            await until(lambda: bool(owned(a)) and bool(owned(b)), timeout=40)
            # The lost sessions lapse and are freed, on whichever worker owns them now.
            await until(lambda: all(active(o) == 1 for o in orgs), timeout=LEASE_S + 20)
            # A leaves: B owns everything, rebuilt from the store, and sees the same.
            await a.stop()
            await until(lambda: owned(b) == set(range(PARTITIONS)) == set(b.states), timeout=40)
            await asyncio.sleep(LEASE_S + 1)  # a lapse written twice would show by now
            beating = False
            await beat
            await eventually(lambda: states_match_the_store(b, check), timeout=20)
            assert all(active(o) == 1 for o in orgs)
            for state in b.states.values():
                assert {sk[1] for sk in state.leases} <= {"kept"}

            rows = await check.query(
                "SELECT org_id, session_id, run_id, count(), uniqExact(event_id) FROM events"
                " WHERE type = 'session.ended' AND item = 'expired' GROUP BY ALL ORDER BY ALL"
            )
            assert rows == [
                (o, s, f"run-{s}", 1, 1)
                for o in sorted(orgs)
                for s in ("lost-1", "lost-2", "lost-3")
            ]
            assert a.processed + b.processed > 0
        finally:
            beating = False
            for w in (a, b):
                await w.stop()
            await producer.stop()
            await table.stop()
            for s in stores:
                await s.stop()
            await drop_database(admin, store_url)
            await admin.stop()
