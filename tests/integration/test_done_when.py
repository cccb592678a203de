"""Issue 5, "Done when", tried as a new user would against the real broker and chDB."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually
from tests.factories import make_event

ADMIN = bearer(ADMIN_KEY)


async def quota(client: httpx.AsyncClient, key: str) -> dict:
    r = await client.get("/api/v2/quota", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def check(client: httpx.AsyncClient, key: str, **body) -> httpx.Response:
    return await client.post("/api/v2/quota/check", json=body, headers=bearer(key))


async def test_free_org_as_a_new_user_sees_it(client, new_org: OrgFactory, send: Send):
    org, key = await new_org("free")
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "test"}, headers=ADMIN)
    assert r.status_code == 201, r.text

    # A free org sees 15,000,000 tokens, 3 sessions and 1,000 tool calls.
    q = await quota(client, key)
    meters = q["meters"]
    assert (q["plan"], q["status"]) == ("free", "active")
    assert meters["tokens"]["limit"] == 15_000_000
    assert meters["sessions"] == {"limit": 3, "active": 0, "remaining": 3}
    assert meters["tool_calls"]["limit"] == 1000

    # 999 successful live calls; failed calls and test-key calls never count.
    ok = [make_event("tool.call", org_id=org) for _ in range(999)]
    failed = [make_event("tool.call", org_id=org, success=False) for _ in range(40)]
    test = [make_event("tool.call", org_id=org, key_mode="test") for _ in range(40)]
    await send(*ok, *failed, *test)
    await eventually(lambda: _tool_calls_used(client, key, 999))
    r = await check(client, key, meter="tool_calls")
    assert r.status_code == 200, r.text
    assert r.json()["remaining"] == 1

    # The 1,000th goes through; the check for the 1,001st answers billing_limit_reached.
    await send(make_event("tool.call", org_id=org))
    await eventually(lambda: _tool_calls_used(client, key, 1000))
    r = await check(client, key, meter="tool_calls")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "billing_limit_reached"
    assert "upgrade" in r.json()["error"]["message"]
    tool_calls = (await quota(client, key))["meters"]["tool_calls"]
    assert (tool_calls["used"], tool_calls["remaining"]) == (1000, 0)
    # A runtime that made the 1,001st call anyway: counted, and still refused.
    await send(make_event("tool.call", org_id=org))
    await eventually(lambda: _tool_calls_used(client, key, 1001))
    r = await check(client, key, meter="tool_calls")
    assert r.json()["error"]["code"] == "billing_limit_reached"

    # The 4th concurrent session gets 429.
    await send(*(make_event("session.started", org_id=org, session_id=f"s{i}") for i in range(3)))
    await eventually(lambda: _sessions_active(client, key, 3))
    r = await check(client, key, meter="sessions")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "concurrency_limit"

    # A managed gpt-4o request on free gets 403 plan_limit_error.
    r = await check(client, key, meter="requests", model="gpt-4o")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "plan_limit_error"

    # An upgrade to developer shows 65,000,000 tokens at once.
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/subscription", json={"plan": "developer"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.json()["limit"] == 65_000_000


async def _tool_calls_used(client: httpx.AsyncClient, key: str, n: int) -> bool:
    r = await client.get("/api/v2/quota/tool-calls", headers=bearer(key))
    return r.json()["used"] == n


async def _sessions_active(client: httpx.AsyncClient, key: str, n: int) -> bool:
    r = await client.get("/api/v2/sessions/quota", headers=bearer(key))
    return r.json()["active"] == n


async def test_concurrent_session_checks_never_admit_more_than_the_limit(
    client, new_org: OrgFactory, send: Send
):
    org, key = await new_org("free")
    answers = await asyncio.gather(*(check(client, key, meter="sessions") for _ in range(12)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 3 + [429] * 9
    refused = [r.json()["error"]["code"] for r in answers if r.status_code == 429]
    assert set(refused) == {"concurrency_limit"}

    # The admitted sessions start: the counters take over from the reservations.
    await send(*(make_event("session.started", org_id=org, session_id=f"s{i}") for i in range(3)))
    await eventually(lambda: _sessions_active(client, key, 3))
    assert (await check(client, key, meter="sessions")).status_code == 429

    # One ends: exactly one slot frees up.
    await send(make_event("session.ended", org_id=org, session_id="s0"))
    await eventually(lambda: _sessions_active(client, key, 2))
    answers = await asyncio.gather(*(check(client, key, meter="sessions") for _ in range(4)))
    assert sorted(r.status_code for r in answers) == [200, 429, 429, 429]
