"""The compose topology end to end: two `tally worker`s and a `tally api`, exactly.

Each part is a `Tally` built the way `tally worker` (worker only, under its faust host) and
`tally api` (API only) build it, all sharing one broker and one store as the compose services
share Kafka and ClickHouse. Events flow while a worker leaves; the API, which counts nothing
itself, must answer the exact quota from what the workers publish. Backends: the embedded
broker with a fresh chDB database (always), and Kafka with a ClickHouse server in Docker
(marker `docker`; skips where Docker is missing).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.app import create_app
from commands.runtime import Tally
from tally.config import EVENTS_TOPIC, Settings
from tally.store import Store
from tests.backends import TOPOLOGIES, Topology, drop_database, fresh_database, topology
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event, wire

pytestmark = pytest.mark.slow

PARTITIONS = 4


@pytest.fixture(params=TOPOLOGIES)
def parts(request: pytest.FixtureRequest) -> Iterator[Topology]:
    chdb_url = request.getfixturevalue("stack").store.url if request.param == "embedded" else ""
    with topology(request.param, chdb_url) as t:
        yield t


class Deployment:
    """Two worker processes and an API process, as docker-compose.yml runs them."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        def part(name: str, worker: bool) -> Tally:
            s = settings.model_copy(update={"data_dir": data_dir / name})
            return Tally(s, worker=worker, api=not worker)

        self.workers = [part("worker-1", True), part("worker-2", True)]
        self.apis = [part("api", False)]
        self.clients: list[httpx.AsyncClient] = []
        self._exit = AsyncExitStack()

    async def __aenter__(self) -> Deployment:
        try:
            for t in self.apis + self.workers:
                self._exit.push_async_callback(t.stop)
                await t.start()
            for t in self.apis:
                assert t.services is not None
                transport = httpx.ASGITransport(app=create_app(t.services))
                client = httpx.AsyncClient(transport=transport, base_url="http://tally")
                self.clients.append(await self._exit.enter_async_context(client))
            for t in self.workers:
                await t.start_worker()  # what `tally worker` runs: the worker under faust
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    def owned(self, t: Tally) -> set[int]:
        consumer = t.worker._consumer if t.worker is not None else None
        return {tp.partition for tp in consumer.assignment()} if consumer is not None else set()


async def get(client: httpx.AsyncClient, path: str, key: str) -> httpx.Response:
    return await client.get(path, headers=bearer(key))


async def create_org(client: httpx.AsyncClient) -> tuple[str, str]:
    org = f"topo-{uuid.uuid4().hex[:10]}"
    admin = bearer(ADMIN_KEY)
    r = await client.post(
        "/api/v2/admin/orgs", json={"org_id": org, "signup_date": "2026-01-01"}, headers=admin
    )
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=admin)
    assert r.status_code == 201, r.text
    return org, r.json()["key"]


@pytest.fixture
async def producer(parts: Topology) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=parts.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


async def send(producer: AIOKafkaProducer, events: list[dict[str, Any]]) -> None:
    for e in events:
        await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
    await producer.flush()


async def test_two_workers_and_an_api_process_answer_the_exact_quota(
    parts: Topology, producer: AIOKafkaProducer, tmp_path: Path
):
    admin = Store(parts.admin_url)
    await admin.start()
    store_url = await fresh_database(admin, "topology")
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers=parts.bootstrap,
        clickhouse_url=store_url,
        admin_key=ADMIN_KEY,
        partitions=PARTITIONS,
        group_id=f"topology-{run}",
        log_epoch=f"topology-{run}",
        session_timeout_ms=parts.session_timeout_ms,
        batch_timeout_ms=20,
    )
    try:
        async with Deployment(settings, tmp_path) as d:
            w1, w2 = d.workers

            async def split() -> bool:
                one, two = d.owned(w1), d.owned(w2)
                return bool(one and two and not one & two) and one | two == set(range(PARTITIONS))

            await eventually(split, timeout=60)

            org_a, key_a = await create_org(d.clients[0])
            org_b, key_b = await create_org(d.clients[0])

            sent: list[dict[str, Any]] = []
            for i in range(40):
                for org in (org_a, org_b):
                    sent.append(make_event(org_id=org, input_tokens=100 + i, output_tokens=i))
            await send(producer, sent + sent[:7])  # with producer retries

            async def exact(expected: dict[str, int]) -> bool:
                for client in d.clients:
                    for org, key in ((org_a, key_a), (org_b, key_b)):
                        body = (await get(client, "/api/v2/quota/tokens", key)).json()
                        if body["used"] != expected[org]:
                            return False
                return True

            def tokens() -> dict[str, int]:
                out = {org_a: 0, org_b: 0}
                for e in sent:
                    out[e["org_id"]] += e["input_tokens"] + e["output_tokens"]
                return out

            await eventually(lambda: exact(tokens()), timeout=30)

            # One worker leaves while events flow: the other takes every partition over.
            more = [make_event(org_id=o, input_tokens=7, output_tokens=3) for o in (org_a, org_b)]
            await send(producer, more[:1])
            await w1.stop()
            sent += more
            await send(producer, more[1:] + more[:1])

            async def all_on_w2() -> bool:
                return d.owned(w2) == set(range(PARTITIONS))

            await eventually(all_on_w2, timeout=60)
            await eventually(lambda: exact(tokens()), timeout=30)

            for client in d.clients:
                r = await client.get("/readyz")
                assert r.status_code == 200, r.text
            store = d.apis[0].store
            assert store is not None
            want = sorted((o, 41, n) for o, n in tokens().items())

            async def stored_once() -> bool:  # the quota may show events before they are stored
                rows = await store.query(
                    "SELECT org_id, count(), sum(billable) FROM events GROUP BY org_id"
                    " ORDER BY org_id"
                )
                return rows == want

            await eventually(stored_once, timeout=30)
    finally:
        await drop_database(admin, store_url)
        await admin.stop()
