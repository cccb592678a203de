"""The dashboard lists an org's recent alerts and the state of its webhook endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api.alerts.service import Alerting
from commands.runtime import Tally
from tests.conftest import OrgFactory, Send, bearer, eventually
from tests.factories import make_event
from tests.integration.receiver import Receiver
from tests.integration.test_dashboard import base_url, browser  # noqa: F401 - fixtures


async def test_the_dashboard_lists_alerts_and_endpoints(
    stack: Tally,
    client: httpx.AsyncClient,
    new_org: OrgFactory,
    send: Send,
    base_url: str,  # noqa: F811
    browser: Callable[[], Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    alerts = stack.services.part(Alerting) if stack.services else None
    assert alerts is not None
    policy = dataclasses.replace(alerts.dispatcher.policy, allow_private=True)
    monkeypatch.setattr(alerts.dispatcher, "policy", policy)
    monkeypatch.setattr(stack.settings, "webhook_allow_private", True)
    org, key = await new_org(plan="scale")
    with Receiver() as receiver:
        body = {"url": receiver.url, "events": ["usage.threshold_reached"]}
        r = await client.post("/api/v2/webhooks", json=body, headers=bearer(key))
        assert r.status_code == 201, r.text
        rules = {"rules": [{"meter": "tool_calls", "at": 2}]}
        assert (
            await client.put("/api/v2/alerts/rules", json=rules, headers=bearer(key))
        ).is_success
        await send(*[make_event("tool.call", org_id=org) for _ in range(2)])

        async def fired() -> list[dict[str, Any]]:
            r = await client.get("/api/v2/alerts", headers=bearer(key))
            return list(r.json()["alerts"])

        [alert] = await eventually(fired, timeout=30)

        def look() -> tuple[list[str], list[str]]:
            d = browser()
            wait = WebDriverWait(d, 20)
            d.get(f"{base_url}/dashboard")
            field = wait.until(lambda drv: drv.find_element(By.CSS_SELECTOR, "#key-input"))
            field.send_keys(key)
            d.find_element(By.ID, "key-submit").click()
            wait.until(lambda drv: drv.find_element(By.CSS_SELECTOR, "#app[data-ready='true']"))
            rows = d.find_elements(By.CSS_SELECTOR, "#alert-table tbody tr")
            hooks = d.find_elements(By.CSS_SELECTOR, "#webhook-table tbody tr")
            return (
                [f"{r.get_attribute('data-alert')} {r.text}" for r in rows],
                [f"{h.get_attribute('data-state')} {h.text}" for h in hooks],
            )

        rows, hooks = await asyncio.to_thread(look)
    assert len(rows) == 1
    assert rows[0].startswith(alert["data"]["id"])
    assert "usage.threshold_reached" in rows[0] and "tool_calls" in rows[0]
    assert len(hooks) == 1 and hooks[0].startswith("enabled") and receiver.url in hooks[0]
