"""Alerts on the session stack: rules, endpoints, plan gate, refused targets, and the
resolved alerts of a new billing window (the evaluator's clock moved on a month)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from commands.runtime import Tally
from tests.conftest import OrgFactory, Send, bearer, eventually
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
    alerts = stack.services.alerts if stack.services else None
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
