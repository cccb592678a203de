"""The first vertical slice: raw events on usage.events show up exactly in the token quota."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import orjson

from tests.conftest import OrgFactory, Send, bearer, eventually
from tests.factories import make_event


async def tokens(client: httpx.AsyncClient, key: str) -> dict:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_llm_usage_is_counted_exactly_once(client, new_org: OrgFactory, send: Send):
    org, key = await new_org()
    events = [make_event(org_id=org, input_tokens=1000, output_tokens=234) for _ in range(5)]
    await send(*events)
    await send(events[0], events[1])  # producer retries: same event_id
    await send(make_event(org_id=org, key_mode="test", input_tokens=10**6))
    # A late event of the window before (the org's windows are calendar months), within
    # TALLY_MAX_EVENT_AGE_DAYS: stored in its own window, not counted in this one.
    last_month = datetime.now(UTC).replace(day=1, hour=0, minute=0) - timedelta(days=1)
    await send(make_event(org_id=org, ts=last_month.isoformat(), input_tokens=10**6))
    marker = make_event(org_id=org, input_tokens=1, output_tokens=0)
    await send(marker)

    body = await eventually(lambda: _used_is(client, key, 5 * 1234 + 1), timeout=10)
    assert set(body) == {"limit", "used", "remaining", "window_start", "window_end"}
    assert body["limit"] == 15_000_000
    assert body["remaining"] == 15_000_000 - 6171


async def _used_is(client: httpx.AsyncClient, key: str, expected: int) -> dict | None:
    body = await tokens(client, key)
    return body if body["used"] == expected else None


async def test_malformed_messages_neither_count_nor_stop_the_stream(
    client, new_org: OrgFactory, send: Send, stack
):
    org, key = await new_org()
    before = stack.worker.dead_letters
    await send(b"not json at all", key=org.encode())
    await send(make_event(org_id=org, input_tokens=-5))
    bad = make_event(org_id=org)
    del bad["org_id"]
    await send(orjson.dumps(bad), key=org.encode())
    await send(make_event(org_id=org, input_tokens=7, output_tokens=3))
    await eventually(lambda: _used_is(client, key, 10))

    async def three_dead_letters() -> bool:  # produced with the insert, after the counters
        return stack.worker.dead_letters - before == 3

    await eventually(three_dead_letters)


async def test_window_is_anchored_on_signup_day(client, new_org: OrgFactory):
    now = datetime.now(UTC)
    org, key = await new_org(signup_date=date(2025, 3, now.day))
    body = await tokens(client, key)
    assert body["window_start"] == f"{now:%Y-%m-%d}T00:00:00Z"


async def test_quota_needs_a_key(client):
    r = await client.get("/api/v2/quota/tokens")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    r = await client.get("/api/v2/quota/tokens", headers=bearer("tk_live_000000000000_nope"))
    assert r.status_code == 401


async def test_a_key_reads_its_own_org_only(client, new_org: OrgFactory, send: Send):
    org_a, key_a = await new_org()
    org_b, key_b = await new_org()
    await send(make_event(org_id=org_a, input_tokens=500, output_tokens=0))
    await eventually(lambda: _used_is(client, key_a, 500))
    assert (await tokens(client, key_b))["used"] == 0


async def test_admin_needs_the_admin_key(client, new_org: OrgFactory):
    _, key = await new_org()
    body = {"org_id": "x-org", "plan": "free", "signup_date": "2026-01-01"}
    r = await client.post("/api/v2/admin/orgs", json=body, headers=bearer(key))
    assert r.status_code == 401
    r = await client.post("/api/v2/admin/orgs", json=body)
    assert r.status_code == 401


async def test_ready_when_broker_store_and_counters_are(client):
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {
        "broker": True,
        "counter_table": True,
        "store": True,
        "worker": True,
    }
    assert (await client.get("/healthz")).json()["status"] == "ok"
