"""Alerts on the session stack: rules, endpoints, plan gate, refused targets, and the
resolved alerts of a new billing window (the evaluator's clock moved on a month)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from api.alerts.service import Alerting
from commands.runtime import Tally
from tally.config import ALERTS_TOPIC
from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually
from tests.factories import make_event
from tests.integration.receiver import Receiver


async def test_a_free_org_cannot_create_an_endpoint(
    client: httpx.AsyncClient, new_org: OrgFactory
) -> None:
    _, key = await new_org(plan="free")
    body = {"url": "https://hooks.example.com/tally", "events": ["usage.threshold_reached"]}
    r = await client.post("/api/v2/webhooks", json=body, headers=bearer(key))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "plan_limit_error"
    assert "Scale" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:192.168.0.1]/hook",
    ],
)
async def test_a_private_target_is_refused_by_default(
    client: httpx.AsyncClient, new_org: OrgFactory, url: str
) -> None:
    _, key = await new_org(plan="scale")
    r = await client.post(
        "/api/v2/webhooks", json={"url": url, "events": ["credits.low"]}, headers=bearer(key)
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "target_refused"


async def test_http_is_refused(client: httpx.AsyncClient, new_org: OrgFactory) -> None:
    _, key = await new_org(plan="scale")
    body = {"url": "http://hooks.example.com/x", "events": ["credits.low"]}
    r = await client.post("/api/v2/webhooks", json=body, headers=bearer(key))
    assert r.status_code == 400 and "https" in r.json()["error"]["message"]


async def test_rules_in_force_are_the_defaults_then_the_orgs(
    client: httpx.AsyncClient, new_org: OrgFactory
) -> None:
    _, key = await new_org(plan="free")
    rules = (await client.get("/api/v2/alerts/rules", headers=bearer(key))).json()["rules"]
    defaults = {(r["meter"], r["percent"]) for r in rules if r["percent"] is not None}
    # Every limited meter of the Free plan, at 80% and 100%.
    for meter in ("tokens", "tool_calls", "requests", "requests_minute", "requests_day"):
        assert {(meter, 80), (meter, 100)} <= defaults
    body = {"rules": [{"meter": "tool_calls", "at": 50}, {"meter": "tokens", "percent": 90}]}
    r = await client.put("/api/v2/alerts/rules", json=body, headers=bearer(key))
    assert r.status_code == 200, r.text
    own = [x for x in r.json()["rules"] if not x["default"]]
    assert [(x["meter"], x["at"], x["percent"]) for x in own] == [
        ("tool_calls", 50, None),
        ("tokens", None, 90),
    ]
    r = await client.put(
        "/api/v2/alerts/rules", json={"rules": [{"meter": "tokenz", "at": 1}]}, headers=bearer(key)
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_meter"


async def test_a_new_billing_window_delivers_the_resolved_alerts(
    stack: Tally,
    client: httpx.AsyncClient,
    new_org: OrgFactory,
    send: Send,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alerts = stack.services.part(Alerting) if stack.services else None
    assert alerts is not None
    monkeypatch.setattr(
        alerts.dispatcher,
        "policy",
        dataclasses.replace(alerts.dispatcher.policy, allow_private=True),
    )
    monkeypatch.setattr(stack.settings, "webhook_allow_private", True)
    org, key = await new_org(plan="scale")
    with Receiver() as receiver:
        r = await client.post(
            "/api/v2/webhooks",
            json={
                "url": receiver.url,
                "events": ["usage.threshold_reached", "usage.threshold_resolved"],
            },
            headers=bearer(key),
        )
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        assert secret.startswith("whsec_")
        body = {"rules": [{"meter": "tool_calls", "at": 3}]}
        assert (await client.put("/api/v2/alerts/rules", json=body, headers=bearer(key))).is_success
        await send(*[make_event("tool.call", org_id=org) for _ in range(3)])

        async def reached() -> list[dict[str, Any]]:
            got = receiver.delivered(secret).values()
            return [p for p in got if p["type"] == "usage.threshold_reached"]

        [first] = await eventually(reached, timeout=30)
        assert first["data"]["meter"] == "tool_calls"
        assert first["data"]["threshold"] == 3 and first["data"]["used"] == 3
        assert first["data"]["limit"] is None  # Scale: tool calls unlimited

        month_later = datetime.fromisoformat(first["data"]["window_end"]) + timedelta(hours=1)
        monkeypatch.setattr(alerts, "clock", lambda: month_later)

        async def resolved() -> list[dict[str, Any]]:
            got = receiver.delivered(secret).values()
            return [p for p in got if p["type"] == "usage.threshold_resolved"]

        [done] = await eventually(resolved, timeout=30)
        assert done["data"]["window_start"] == first["data"]["window_start"]
        assert done["data"]["used"] == 0  # nothing used in the new window yet
        await asyncio.sleep(1.5)  # a few more evaluations: nothing fires twice
        assert len(receiver.delivered(secret)) == 2
    history = (await client.get("/api/v2/alerts", headers=bearer(key))).json()["alerts"]
    assert [a["type"] for a in history] == ["usage.threshold_resolved", "usage.threshold_reached"]
    assert datetime.fromisoformat(done["timestamp"]) > datetime.now(UTC) + timedelta(days=1)


async def alerts_on_topic(stack: Tally, org: str) -> list[dict[str, Any]]:
    """Every message of `org` on usage.alerts (keyed by org), from the start."""
    consumer = AIOKafkaConsumer(
        ALERTS_TOPIC,
        bootstrap_servers=stack.settings.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        out = []
        batches = await consumer.getmany(timeout_ms=3000)
        while batches:
            for records in batches.values():
                out += [orjson.loads(r.value) for r in records if r.key == org.encode()]
            batches = await consumer.getmany(timeout_ms=500)
        return out
    finally:
        await consumer.stop()


async def test_an_endpoint_failing_too_long_is_disabled_and_an_alert_says_so(
    stack: Tally,
    client: httpx.AsyncClient,
    new_org: OrgFactory,
    send: Send,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alerts = stack.services.part(Alerting) if stack.services else None
    assert alerts is not None
    policy = dataclasses.replace(
        alerts.dispatcher.policy, allow_private=True, disable_after=timedelta(seconds=2)
    )
    monkeypatch.setattr(alerts.dispatcher, "policy", policy)
    monkeypatch.setattr(stack.settings, "webhook_allow_private", True)
    org, key = await new_org(plan="scale")
    with Receiver(fail_first=10**9) as broken, Receiver() as healthy:
        r = await client.post(
            "/api/v2/webhooks",
            json={"url": broken.url, "events": ["usage.threshold_reached"]},
            headers=bearer(key),
        )
        bad = r.json()["id"]
        r = await client.post(
            "/api/v2/webhooks",
            json={"url": healthy.url, "events": ["webhook.endpoint_disabled"]},
            headers=bearer(key),
        )
        secret = r.json()["secret"]
        rules = {"rules": [{"meter": "tool_calls", "at": 1}]}
        assert (
            await client.put("/api/v2/alerts/rules", json=rules, headers=bearer(key))
        ).is_success
        await send(make_event("tool.call", org_id=org))

        async def told() -> list[dict[str, Any]]:
            return list(healthy.delivered(secret).values())

        [said] = await eventually(told, timeout=60)
        assert said["type"] == "webhook.endpoint_disabled" and said["data"]["rule"] == bad
        hooks = (await client.get("/api/v2/webhooks", headers=bearer(key))).json()["webhooks"]
        states = {h["id"]: (h["state"], h["failing_since"] is not None) for h in hooks}
        assert states[bad] == ("disabled", True)
        assert len(broken.requests) >= 2  # retried with backoff until it was disabled
        assert len(broken.ids()) == 1  # always the same webhook-id
        # The delivery log says what the receiver answered each time.
        log = (await client.get(f"/api/v2/webhooks/{bad}/deliveries", headers=bearer(key))).json()
        [d] = log["deliveries"]
        assert d["status"] == "pending" and {a["status_code"] for a in d["attempts"]} == {503}
    types = sorted(m["type"] for m in await alerts_on_topic(stack, org))
    assert types == ["usage.threshold_reached", "webhook.endpoint_disabled"]


async def test_a_low_credit_balance_fires_once(
    stack: Tally, client: httpx.AsyncClient, new_org: OrgFactory
) -> None:
    alerts = stack.services.part(Alerting) if stack.services else None
    assert alerts is not None
    org, key = await new_org(plan="free")
    rules = {"rules": [{"meter": "credits", "below": 5_000_000}]}
    assert (await client.put("/api/v2/alerts/rules", json=rules, headers=bearer(key))).is_success
    top = {"amount_micros": 1_000_000, "idempotency_key": "first"}
    r = await client.post(f"/api/v2/admin/orgs/{org}/credits", json=top, headers=bearer(ADMIN_KEY))
    assert r.status_code == 201, r.text
    await alerts.evaluate(credits=True)  # balances are read every 20 ticks; now, here
    await alerts.evaluate(credits=True)  # and again: nothing fires twice
    history = (await client.get("/api/v2/alerts", headers=bearer(key))).json()["alerts"]
    assert [(a["type"], a["data"]["used"], a["data"]["threshold"]) for a in history] == [
        ("credits.low", 1_000_000, 5_000_000)
    ]
