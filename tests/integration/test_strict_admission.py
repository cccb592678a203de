"""Strict admission over two API replicas sharing one worker, on the real embedded broker and
chDB: the worker that owns the org decides every strict check in log order, so concurrent
checks spread over the replicas never admit more than the plan allows; reservations hold
until settled or lapsed, and quota reads show them apart from `used`.

Replicas A and B are two `tally api` processes' worth of Tally (API only) in this process,
each with its own store client, counter table and emitter, as compose runs them; the worker
is one `tally worker`'s, on a broker of the test's own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from api.app import create_app
from commands.runtime import Tally
from streams.sink import ClickHouseSink
from streams.worker import Worker
from tally.config import EVENTS_TOPIC, Settings
from tally.store import Store
from tally.topics import ensure_topics
from tests.backends import drop_database, fresh_database, topology
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event, wire
from tests.streaming import BOOK, owned, states_match_the_store, until

pytestmark = pytest.mark.slow

ADMIN = bearer(ADMIN_KEY)
PARTITIONS = 2


@dataclass
class Cluster:
    worker: Worker
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    producer: AIOKafkaProducer
    check: Store  # a store client of the test's own

    async def send(self, *events: dict) -> None:
        for e in events:
            await self.producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
        await self.producer.flush()

    async def org(self, plan: str = "free") -> tuple[str, str]:
        """A new org with a live key that both replicas accept."""
        org = f"strict-{uuid.uuid4().hex[:10]}"
        body = {"org_id": org, "plan": plan, "signup_date": "2026-01-01"}
        r = await self.a.post("/api/v2/admin/orgs", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        r = await self.a.post(
            f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=ADMIN
        )
        key = r.json()["key"]

        async def both_accept() -> bool:
            for http in (self.a, self.b):
                if (await http.get("/api/v2/quota", headers=bearer(key))).status_code != 200:
                    return False
            return True

        await eventually(both_accept, timeout=10)
        return org, key


@pytest_asyncio.fixture
async def cluster(stack: Tally, tmp_path: Path) -> AsyncIterator[Cluster]:
    with topology("embedded", stack.store.url) as parts:
        await ensure_topics(parts.bootstrap, PARTITIONS)
        admin = Store(parts.admin_url)
        await admin.start()
        url = await fresh_database(admin, "strict")
        settings = Settings(
            data_dir=tmp_path / "worker",
            bootstrap_servers=parts.bootstrap,
            clickhouse_url=url,
            admin_key=ADMIN_KEY,
            registry_refresh_s=0.5,
            group_id=f"strict-{uuid.uuid4().hex[:8]}",
            log_epoch=f"strict-{uuid.uuid4().hex[:8]}",
            session_timeout_ms=parts.session_timeout_ms,
            batch_timeout_ms=20,
            partitions=PARTITIONS,
        )
        store = Store(url)
        check = Store(url)
        await store.start()
        await check.start()
        worker = Worker(settings, ClickHouseSink(store, settings.log_epoch, 3600), BOOK)
        producer = AIOKafkaProducer(bootstrap_servers=parts.bootstrap, acks="all")
        replicas: list[Tally] = []
        clients: list[httpx.AsyncClient] = []
        try:
            await worker.start()
            await until(lambda: owned(worker) == set(range(PARTITIONS)), timeout=40)
            await producer.start()
            for name in ("a", "b"):
                tally = Tally(
                    settings.model_copy(update={"data_dir": tmp_path / name}), worker=False
                )
                replicas.append(tally)
                await tally.start()
                assert tally.services is not None
                await asyncio.wait_for(tally.services.counters.ready.wait(), 60)
                transport = httpx.ASGITransport(app=create_app(tally.services))
                clients.append(httpx.AsyncClient(transport=transport, base_url=f"http://{name}"))
            yield Cluster(worker, clients[0], clients[1], producer, check)
        finally:
            for http in clients:
                await http.aclose()
            for tally in replicas:
                await tally.stop()
            await producer.stop()
            await worker.stop()
            await store.stop()
            await check.stop()
            await drop_database(admin, url)
            await admin.stop()


async def checks(c: Cluster, key: str, n: int, body: dict) -> list[httpx.Response]:
    """`n` concurrent checks, every other one on each replica."""
    return await asyncio.gather(
        *(
            (c.a if i % 2 else c.b).post("/api/v2/quota/check", json=body, headers=bearer(key))
            for i in range(n)
        )
    )


def admitted(answers: list[httpx.Response]) -> list[dict]:
    for r in answers:
        assert r.status_code in (200, 429), r.text
    return [r.json() for r in answers if r.status_code == 200]


async def test_concurrent_session_checks_over_two_replicas_admit_exactly_the_plan(
    cluster: Cluster,
):
    c = cluster
    org, key = await c.org("free")  # 3 concurrent sessions
    ok = admitted(await checks(c, key, 200, {"meter": "sessions"}))
    assert len(ok) == 3
    assert {a["reservation_id"] for a in ok} != {None}
    r = (await checks(c, key, 1, {"meter": "sessions"}))[0]
    assert r.status_code == 429 and r.json()["error"]["code"] == "concurrency_limit"

    # The admitted sessions start, each settling its reservation: 3 running, none held.
    await c.send(
        *(
            make_event(
                "session.started",
                org_id=org,
                session_id=f"s{i}",
                reservation_id=a["reservation_id"],
            )
            for i, a in enumerate(ok)
        )
    )

    async def running() -> dict | None:
        body = (await c.b.get("/api/v2/quota", headers=bearer(key))).json()
        sessions, held = body["meters"]["sessions"], body["reserved"]["sessions"]
        return body if sessions["active"] == 3 and held == 0 else None

    await eventually(running, timeout=15)
    assert admitted(await checks(c, key, 20, {"meter": "sessions"})) == []

    # One ends over the API: exactly one more is admitted, whichever replica is asked.
    r = await c.a.delete("/api/v2/sessions/s1", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert len(admitted(await checks(c, key, 200, {"meter": "sessions"}))) == 1
    await eventually(lambda: states_match_the_store(c.worker, c.check), timeout=20)


async def test_token_reservations_admit_what_remains_and_settle_or_lapse(cluster: Cluster):
    c = cluster
    org, key = await c.org("developer")  # 65,000,000 tokens a period, no cost budget
    await c.send(
        make_event(
            "llm.usage", org_id=org, input_tokens=64_990_000, output_tokens=0, model="gpt-4o"
        )
    )

    async def used(n: int) -> bool:
        r = await c.a.get("/api/v2/quota/tokens", headers=bearer(key))
        return r.json()["used"] == n

    await eventually(lambda: used(64_990_000), timeout=15)

    # 10,000 remain: 50 concurrent checks reserving 1,000 each admit exactly 10.
    ok = admitted(await checks(c, key, 50, {"meter": "tokens", "reserve": 1000, "ttl_s": 4}))
    assert len(ok) == 10
    refused = await checks(c, key, 1, {"meter": "tokens", "reserve": 1000})
    assert refused[0].status_code == 429
    assert refused[0].json()["error"]["code"] == "billing_limit_reached"

    async def reserved(n: int) -> dict | None:
        body = (await c.b.get("/api/v2/quota", headers=bearer(key))).json()
        return body if body["reserved"]["tokens"] == n else None

    body = await eventually(lambda: reserved(10_000), timeout=10)
    assert body["meters"]["tokens"]["used"] == 64_990_000  # held apart from used

    # Three are settled by the usage that carries them (800 tokens each were used).
    await c.send(
        *(
            make_event(
                "llm.usage",
                org_id=org,
                input_tokens=800,
                output_tokens=0,
                model="gpt-4o",
                reservation_id=a["reservation_id"],
            )
            for a in ok[:3]
        )
    )
    body = await eventually(lambda: reserved(7_000), timeout=10)
    assert body["meters"]["tokens"]["used"] == 64_992_400
    # Still full: 64,992,400 used + 7,000 held leaves 600.
    assert admitted(await checks(c, key, 5, {"meter": "tokens", "reserve": 1000})) == []

    # The other seven lapse: the figures come back, and what remains is admitted exactly.
    await eventually(lambda: reserved(0), timeout=15)
    ok = admitted(await checks(c, key, 20, {"meter": "tokens", "reserve": 1000, "ttl_s": 60}))
    assert len(ok) == 7  # 7,600 remain
    await eventually(lambda: reserved(7_000), timeout=10)
    await eventually(lambda: states_match_the_store(c.worker, c.check), timeout=20)


async def test_cost_reservations_hold_the_upstream_cost_budget(cluster: Cluster):
    c = cluster
    _, key = await c.org("free")  # a managed-mode upstream-cost budget of 5,000,000 micro-USD
    body = {"meter": "upstream_cost_micros", "reserve": 1_000_000, "ttl_s": 60}
    ok = admitted(await checks(c, key, 12, body))
    assert len(ok) == 5
    assert [a["limit"] for a in ok] == [5_000_000] * 5

    async def held() -> dict | None:
        q = (await c.a.get("/api/v2/quota", headers=bearer(key))).json()
        return q if q["reserved"]["upstream_cost_micros"] == 5_000_000 else None

    q = await eventually(held, timeout=10)
    assert q["meters"]["upstream_cost_micros"]["used"] == 0
