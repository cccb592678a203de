"""Two API replicas over one store see each other's admin writes within the refresh interval.

Replicas A and B are two `tally api` processes' worth of Tally (API only, no worker) in this
process, each with its own store client on one fresh database of the session's chDB engine
(one engine per process) and its own counter table on the session broker, as two compose
replicas share ClickHouse and Kafka. What one writes through its admin API (an org, a key, a
revocation, a plan change) must take effect on the other within `TALLY_REGISTRY_REFRESH_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from api.app import create_app
from api.registry import Registry
from commands.runtime import Tally
from tally.config import Settings
from tally.store import Store
from tests.backends import drop_database, fresh_database
from tests.conftest import ADMIN_KEY, bearer

pytestmark = pytest.mark.slow

REFRESH_S = 0.5
ADMIN = bearer(ADMIN_KEY)


@dataclass
class Replica:
    tally: Tally
    http: httpx.AsyncClient

    @property
    def registry(self) -> Registry:
        assert self.tally.services is not None
        return self.tally.services.registry


@pytest_asyncio.fixture
async def replicas(stack: Tally, tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    admin = Store(stack.store.url)
    await admin.start()
    url = await fresh_database(admin, "replicas")
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            settings = Settings(
                data_dir=tmp_path / name,
                bootstrap_servers=stack.settings.bootstrap_servers,
                clickhouse_url=url,
                admin_key=ADMIN_KEY,
                registry_refresh_s=REFRESH_S,
            )
            tally = Tally(settings, worker=False)
            await tally.start()
            assert tally.services is not None
            await asyncio.wait_for(tally.services.counters.ready.wait(), 60)
            transport = httpx.ASGITransport(app=create_app(tally.services))
            http = httpx.AsyncClient(transport=transport, base_url=f"http://{name}")
            started.append(Replica(tally, http))
        yield started[0], started[1]
    finally:
        for r in started:
            await r.http.aclose()
            await r.tally.stop()
        await drop_database(admin, url)
        await admin.stop()


async def within(check: Callable[[], Awaitable[bool]], limit_s: float) -> float:
    """Seconds until `check` holds; fails if that takes longer than `limit_s`."""
    started = time.monotonic()
    while not await check():
        elapsed = time.monotonic() - started
        assert elapsed < limit_s, f"not within {limit_s}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def tokens(replica: Replica, key: str) -> httpx.Response:
    return await replica.http.get("/api/v2/quota/tokens", headers=bearer(key))


# A refresh every REFRESH_S, plus the time one takes on a busy 2-core machine.
LIMIT_S = REFRESH_S + 3.0


async def test_keys_revocations_and_plan_changes_made_on_one_replica_reach_the_other(
    replicas: tuple[Replica, Replica],
):
    a, b = replicas
    org = f"repl-{time.time_ns()}"
    body = {"org_id": org, "plan": "free", "signup_date": "2026-01-31"}
    assert (await a.http.post("/api/v2/admin/orgs", json=body, headers=ADMIN)).status_code == 201
    r = await a.http.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    key, key_id = r.json()["key"], r.json()["key_id"]
    assert (await tokens(a, key)).status_code == 200

    async def b_accepts() -> bool:
        return (await tokens(b, key)).status_code == 200

    seen_after = await within(b_accepts, LIMIT_S)
    assert (await tokens(b, key)).json()["limit"] == 15_000_000  # the free plan

    # A plan change on A: B's quota shows the new limit.
    r = await a.http.put(
        f"/api/v2/admin/orgs/{org}/subscription", json={"plan": "developer"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text

    async def b_on_developer() -> bool:
        return (await tokens(b, key)).json()["limit"] == 65_000_000

    plan_after = await within(b_on_developer, LIMIT_S)

    # A revocation on A: the key stops working on B.
    r = await a.http.delete(f"/api/v2/admin/orgs/{org}/keys/{key_id}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"]

    async def b_refuses() -> bool:
        return (await tokens(b, key)).status_code == 401

    revoked_after = await within(b_refuses, LIMIT_S)
    assert (await tokens(a, key)).status_code == 401

    # B knows the org and that its only key is revoked: it issues a new one, which A accepts.
    r = await b.http.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    second = r.json()["key"]

    async def a_accepts() -> bool:
        return (await tokens(a, second)).status_code == 200

    await within(a_accepts, LIMIT_S)
    r = await b.http.get(f"/api/v2/admin/orgs/{org}/keys", headers=ADMIN)
    assert [k["revoked"] for k in r.json()["keys"]] == [True, False]
    print(
        f"seen on B after: key {seen_after:.2f}s, plan {plan_after:.2f}s,"
        f" revocation {revoked_after:.2f}s (refresh every {REFRESH_S}s)"
    )


async def test_a_refresh_keeps_what_the_replica_wrote_while_it_was_reading(
    replicas: tuple[Replica, Replica],
):
    """A refresh reads the store, then merges: writes made on this replica in between (and
    so missing from what it read) must survive the merge, and so must a revocation."""
    a, _ = replicas
    registry = a.registry
    org = f"race-{time.time_ns()}"
    await registry.create_org(org, "pro", datetime(2026, 1, 1, tzinfo=UTC).date())
    key, record = await registry.create_key(org, "live")
    snapshot = await registry.load(full=True)  # the store as the refresh read it
    late_key, _ = await registry.create_key(org, "live")
    await registry.revoke_key(record.key_id)
    await registry.accounts.set_default_model(org, "gpt-4o", datetime.now(UTC))
    registry.apply(snapshot)
    assert registry.authenticate(late_key) is not None
    assert registry.authenticate(key) is None
    assert registry.accounts.default_models[org] == "gpt-4o"
    # And a full reload from the store agrees with memory.
    await registry.refresh(full=True)
    assert registry.authenticate(late_key) is not None and registry.authenticate(key) is None


async def test_a_key_is_only_taken_in_once_its_org_is_known(replicas: tuple[Replica, Replica]):
    """Rows as another replica (or a lagging store replica) may leave them: a key whose org
    the store does not show yet stays out of memory, so no request finds a key without its
    org; it is taken in by the refresh that sees the org."""
    _, b = replicas
    store = b.tally.store
    assert store is not None
    org = f"orphan-{time.time_ns()}"
    now = datetime.now(UTC)
    version = int(now.timestamp() * 1_000_000)
    await store.insert(
        "api_keys",
        [["k-orphan-" + org, org, "live", "hash", now, 0, version]],
        ("key_id", "org_id", "mode", "key_hash", "created_at", "revoked", "version"),
    )
    await b.registry.refresh(full=False)
    assert "k-orphan-" + org not in b.registry.keys
    await store.insert(
        "orgs",
        [[org, "free", now.date(), now, version]],
        ("org_id", "plan", "signup_date", "created_at", "version"),
    )
    await b.registry.refresh(full=False)
    assert b.registry.keys["k-orphan-" + org].org_id == org and org in b.registry.orgs
