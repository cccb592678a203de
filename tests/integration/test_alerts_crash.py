"""Alerts fire once and are delivered at least once, whatever dies: `tally up` (worker and
API in one process) killed with SIGKILL between two threshold crossings, and a receiver
that fails the first three attempts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from producers import Emitter
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event
from tests.integration.receiver import Receiver
from tests.integration.test_crash_embedded import Up

pytestmark = pytest.mark.slow


async def test_two_crossings_deliver_exactly_two_alerts_across_a_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_WEBHOOK_ALLOW_PRIVATE", "true")  # the receiver is on loopback
    monkeypatch.setenv("TALLY_WEBHOOK_BACKOFF_S", "1.0")
    monkeypatch.setenv("TALLY_ALERTS_INTERVAL_S", "0.2")
    up = Up(tmp_path)
    up.start()
    try:
        with Receiver(fail_first=3) as receiver:
            async with httpx.AsyncClient(base_url=up.base, timeout=10) as client:
                await up.ready(client)
                admin = bearer(ADMIN_KEY)
                r = await client.post(
                    "/api/v2/admin/orgs",
                    headers=admin,
                    json={"org_id": "acme", "plan": "scale", "signup_date": "2026-01-01"},
                )
                assert r.status_code == 201, r.text
                r = await client.post(
                    "/api/v2/admin/orgs/acme/keys", headers=admin, json={"mode": "live"}
                )
                key = bearer(r.json()["key"])
                r = await client.post(
                    "/api/v2/webhooks",
                    headers=key,
                    json={"url": receiver.url, "events": ["usage.threshold_reached"]},
                )
                assert r.status_code == 201, r.text
                endpoint, secret = r.json()["id"], r.json()["secret"]
                rules = {
                    "rules": [{"meter": "tool_calls", "at": 5}, {"meter": "tool_calls", "at": 10}]
                }
                assert (
                    await client.put("/api/v2/alerts/rules", headers=key, json=rules)
                ).is_success

                async def reached() -> list[dict]:
                    r = await client.get("/api/v2/alerts", headers=key)
                    return [a for a in r.json()["alerts"] if a["type"] == "usage.threshold_reached"]

                async with Emitter(up.broker, spool_dir=tmp_path / "spool") as emitter:
                    for _ in range(5):
                        emitter.emit(make_event("tool.call", org_id="acme"))
                    assert await emitter.wait_stored(60)
                    await eventually(reached, timeout=30)
                    # Killed while the first delivery is still being retried.
                    assert len(receiver.requests) < 4, receiver.requests
                    up.kill()
                    up.start()
                    await up.ready(client)
                    for _ in range(5):
                        emitter.emit(make_event("tool.call", org_id="acme"))
                    assert await emitter.wait_stored(60)

                async def two_delivered() -> bool:
                    return len(receiver.delivered(secret)) == 2

                await eventually(two_delivered, timeout=90, interval=0.2)
                await asyncio.sleep(3)  # time for anything fired or sent twice to show
                delivered = receiver.delivered(secret)  # verified with standardwebhooks
                assert receiver.ids() == set(delivered), "an id was attempted but never delivered"
                assert sorted(p["data"]["threshold"] for p in delivered.values()) == [5, 10]
                assert all(p["data"]["org_id"] == "acme" for p in delivered.values())
                # The receiver refused the first three attempts, whichever alert they were
                # for; each alert's attempts carried its one id, refused ones then the one
                # delivery, and its log shows the same attempts.
                assert [r.status for r in receiver.requests[:3]] == [503, 503, 503]
                attempts = {
                    i: [r.status for r in receiver.requests if r.headers["webhook-id"] == i]
                    for i in delivered
                }
                for statuses in attempts.values():
                    assert statuses[-1] == 204 and set(statuses[:-1]) <= {503}, attempts
                assert sum(len(statuses) - 1 for statuses in attempts.values()) == 3, attempts
                stored = await reached()
                assert len(stored) == 2
                assert {a["data"]["id"] for a in stored} == set(delivered)
                log = (
                    await client.get(f"/api/v2/webhooks/{endpoint}/deliveries", headers=key)
                ).json()["deliveries"]
                assert sorted(d["status"] for d in log) == ["succeeded", "succeeded"]
                by_id = {d["id"]: d for d in log}
                logged = {i: [a["status_code"] for a in by_id[i]["attempts"]] for i in attempts}
                # The log holds each attempt once its answer came back: an attempt the
                # SIGKILL cut between the answer and its record is missing from it (the
                # receiver saw it; the retry carried the same id). At most one was cut.
                for i, statuses in attempts.items():
                    assert logged[i][-1] == 204 and set(logged[i][:-1]) <= {503}, logged
                    assert len(statuses) - 1 <= len(logged[i]) <= len(statuses), logged
                assert sum(len(attempts[i]) - len(logged[i]) for i in attempts) <= 1, logged
            assert up.stop() == 0
    finally:
        up.kill()
