"""Two API replicas over one store: an alert fires once and is delivered once, and after
the replica that owned the org leaves, the other takes over its alerts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from api.alerts.service import Alerting
from api.app import create_app
from commands.runtime import Tally
from tally.config import Settings
from tally.store import Store
from tests.backends import drop_database, fresh_database
from tests.conftest import ADMIN_KEY, Send, bearer, eventually
from tests.factories import make_event
from tests.integration.receiver import Receiver

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def replicas(stack: Tally, tmp_path: Path) -> AsyncIterator[list[Tally]]:
    admin = Store(stack.store.url if stack.store else "")
    await admin.start()
    url = await fresh_database(admin, "alerts")
    group = f"alerts-replicas-{uuid.uuid4().hex[:8]}"  # their own group, apart from the stack
    started: list[Tally] = []
    try:
        for name in ("a", "b"):
            settings = Settings(
                data_dir=tmp_path / name,
                bootstrap_servers=stack.settings.bootstrap_servers,
                clickhouse_url=url,
                admin_key=ADMIN_KEY,
                registry_refresh_s=0.5,
                alerts_interval_s=0.2,
                webhook_allow_private=True,
                group_id=group,
                session_timeout_ms=6_000,
            )
            tally = Tally(settings, worker=False)
            await tally.start()
            assert tally.services is not None
            await asyncio.wait_for(tally.services.counters.ready.wait(), 60)
            started.append(tally)
        yield started
    finally:
        for t in started:
            await t.stop()
        await drop_database(admin, url)
        await admin.stop()


def http(t: Tally) -> httpx.AsyncClient:
    assert t.services is not None
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(t.services)), base_url="http://r"
    )


async def test_one_replica_delivers_and_the_other_takes_over(
    replicas: list[Tally], send: Send
) -> None:
    a, b = replicas
    org = f"alerts-{time.time_ns()}"
    with Receiver() as receiver:
        async with http(a) as ha, http(b) as hb:
            body = {"org_id": org, "plan": "scale", "signup_date": "2026-01-01"}
            assert (
                await ha.post("/api/v2/admin/orgs", json=body, headers=bearer(ADMIN_KEY))
            ).is_success
            r = await ha.post(
                f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=bearer(ADMIN_KEY)
            )
            key = bearer(r.json()["key"])
            r = await ha.post(
                "/api/v2/webhooks",
                json={"url": receiver.url, "events": ["usage.threshold_reached"]},
                headers=key,
            )
            assert r.status_code == 201, r.text
            secret = r.json()["secret"]
            rules = {"rules": [{"meter": "tool_calls", "at": 3}, {"meter": "tool_calls", "at": 6}]}
            assert (await ha.put("/api/v2/alerts/rules", json=rules, headers=key)).is_success

            def owner() -> list[Tally]:
                return [
                    t
                    for t in replicas
                    if t.services and (a := t.services.part(Alerting)) and a.ownership.owns(org)
                ]

            async def one_owner() -> bool:
                return len(owner()) == 1

            await eventually(one_owner, timeout=30)
            await asyncio.sleep(1.5)  # both replicas have read the endpoint and the rules
            await send(*[make_event("tool.call", org_id=org) for _ in range(3)])

            async def delivered(n: int) -> bool:
                return len(receiver.delivered(secret)) == n

            await eventually(lambda: delivered(1), timeout=30)
            await asyncio.sleep(2)
            assert len(receiver.requests) == 1  # one replica sent it, once
            for h in (ha, hb):
                alerts = (await h.get("/api/v2/alerts", headers=key)).json()["alerts"]
                assert [x["data"]["threshold"] for x in alerts] == [3]

            [first] = owner()
            other = b if first is a else a
            await first.stop()  # leaves the group: its orgs move to the other replica
            replicas.remove(first)
            await send(*[make_event("tool.call", org_id=org) for _ in range(3)])
            await eventually(lambda: delivered(2), timeout=60)
            await asyncio.sleep(2)
            thresholds = sorted(p["data"]["threshold"] for p in receiver.delivered(secret).values())
            assert thresholds == [3, 6]
            # Two alerts, each fired once; while the orgs move, the replica taking over may
            # send a delivery again, with the same webhook-id (at least once, per Standard
            # Webhooks: the receiver drops the copy by its id).
            assert receiver.ids() == set(receiver.delivered(secret))
            sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
            assert all(n <= 2 for n in sent.values()), sent
            assert other.services and (alerting := other.services.part(Alerting))
            assert alerting.ownership.owns(org)
