"""Quota reads and the admission check, every answer, against the real stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually
from tests.factories import make_event

ADMIN = bearer(ADMIN_KEY)
FIVE = {"limit", "used", "remaining", "window_start", "window_end"}


async def get(client: httpx.AsyncClient, key: str, path: str) -> httpx.Response:
    r = await client.get(path, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r


async def check(client: httpx.AsyncClient, key: str, **body) -> httpx.Response:
    return await client.post("/api/v2/quota/check", json=body, headers=bearer(key))


def error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return r.status_code, body["error"]["code"]


async def test_every_quota_read_has_its_shape_and_freshness(client, new_org: OrgFactory):
    org, key = await new_org("free")
    # The worker beats once a second per partition: freshness is known soon after start.
    await eventually(lambda: _has_freshness(client, key))
    paths = {
        "/api/v2/quota/tokens": FIVE,
        "/api/v2/quota/tool-calls": FIVE,
        "/api/v2/quota/requests": FIVE | {"minute", "day"},
        "/api/v2/quota/runs": FIVE,
        "/api/v2/sessions/quota": {"limit", "active", "remaining"},
    }
    for path, keys in paths.items():
        r = await get(client, key, path)
        assert set(r.json()) == keys, path
        assert r.headers["X-Tally-Counters-As-Of"].endswith("Z"), path
        assert int(r.headers["X-Tally-Staleness-Ms"]) >= 0
        assert int(r.headers["X-Tally-Stream-Lag"]) >= 0

    q = (await get(client, key, "/api/v2/quota")).json()
    assert set(q) == {
        "org_id",
        "plan",
        "status",
        "trial_ends_at",
        "pending_change",
        "window_start",
        "window_end",
        "meters",
        "reserved",
    }
    assert q["reserved"] == {
        "tokens": 0,
        "tool_calls": 0,
        "requests": 0,
        "upstream_cost_micros": 0,
        "sessions": 0,
    }
    assert (q["org_id"], q["plan"], q["status"], q["trial_ends_at"], q["pending_change"]) == (
        org,
        "free",
        "active",
        None,
        None,
    )
    m = q["meters"]
    assert set(m) == {
        "tokens",
        "tool_calls",
        "requests",
        "upstream_cost_micros",
        "sessions",
        "runs",
    }
    for name in ("tokens", "tool_calls", "upstream_cost_micros", "runs"):
        assert set(m[name]) == FIVE
        assert (m[name]["window_start"], m[name]["window_end"]) == (
            q["window_start"],
            q["window_end"],
        )
    assert set(m["requests"]) == FIVE | {"minute", "day"}
    assert set(m["requests"]["minute"]) == FIVE and set(m["requests"]["day"]) == FIVE
    assert (m["requests"]["minute"]["limit"], m["requests"]["day"]["limit"]) == (10, 500)
    assert m["upstream_cost_micros"]["limit"] == 5_000_000
    assert m["runs"]["limit"] == 500
    now = datetime.now(UTC)
    assert m["requests"]["day"]["window_start"] == f"{now:%Y-%m-%d}T00:00:00Z"


async def _has_freshness(client: httpx.AsyncClient, key: str) -> bool:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    return "X-Tally-Counters-As-Of" in r.headers


async def test_usage_shows_in_every_meter(client, new_org: OrgFactory, send: Send):
    org, key = await new_org("free")
    await send(
        make_event(
            "llm.usage", org_id=org, model="gpt-4o-mini", input_tokens=900, output_tokens=100
        ),
        make_event("gateway.request", org_id=org),
        make_event("gateway.request", org_id=org),
        make_event("gateway.request", org_id=org, key_mode="test"),
        make_event("tool.call", org_id=org),
    )

    async def seen() -> dict | None:
        q = (await get(client, key, "/api/v2/quota")).json()["meters"]
        return q if q["requests"]["used"] == 2 and q["tokens"]["used"] == 1000 else None

    m = await eventually(seen)
    assert m["tool_calls"]["used"] == 1
    assert m["runs"]["used"] == 4  # the live events' runs (the factory gives each its own)
    assert m["requests"]["day"]["used"] == 2
    assert m["upstream_cost_micros"]["used"] == 195  # 900 x 0.15 + 100 x 0.60 micro-USD
    r = (await get(client, key, "/api/v2/quota/requests")).json()
    assert (r["limit"], r["used"], r["remaining"]) == (10_000, 2, 9_998)


async def test_check_allowed_answer(client, new_org: OrgFactory):
    _, key = await new_org("free")
    r = await check(client, key, meter="tokens", amount=1000, model="gpt-4o-mini")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["allowed"] is True and body["meter"] == "tokens" and body["amount"] == 1000
    assert (body["limit"], body["used"], body["remaining"]) == (15_000_000, 0, 15_000_000)
    assert body["reset_at"].endswith("Z")
    await eventually(lambda: _has_freshness(client, key))
    r = await check(client, key, meter="tool_calls")
    assert "X-Tally-Counters-As-Of" in r.headers and "X-Tally-Stream-Lag" in r.headers
    r = await check(client, key, meter="requests", model="gpt-4o")
    assert r.status_code == 403 and "X-Tally-Counters-As-Of" in r.headers


async def test_token_allowance_is_billing_limit_reached(client, new_org: OrgFactory, send: Send):
    org, key = await new_org("free")
    await send(
        make_event(
            "llm.usage", org_id=org, model="gpt-4o-mini", input_tokens=14_999_000, output_tokens=0
        )
    )
    await eventually(lambda: _used(client, key, "/api/v2/quota/tokens", 14_999_000))
    assert (await check(client, key, meter="tokens", amount=1000)).status_code == 200
    r = await check(client, key, meter="tokens", amount=1001)
    assert error(r) == (429, "billing_limit_reached")
    assert "resets at" in r.json()["error"]["message"]


async def _used(client: httpx.AsyncClient, key: str, path: str, n: int) -> bool:
    return (await get(client, key, path)).json()["used"] == n


async def test_upstream_budget_and_byok(client, new_org: OrgFactory, send: Send):
    # Pro: a $50 fair-use budget; 20M gpt-4o input tokens cost exactly that.
    org, key = await new_org("pro")
    await send(make_event(org_id=org, model="gpt-4o", input_tokens=20_000_000, output_tokens=0))
    await eventually(lambda: _cost_is(client, key, 50_000_000))
    r = await check(client, key, meter="requests", model="gpt-4o-mini")
    assert error(r) == (429, "billing_limit_reached")
    assert "BYOK" in r.json()["error"]["message"]
    r = await check(client, key, meter="requests", model="claude-sonnet-4", mode="byok")
    assert r.status_code == 200, r.text
    assert (await check(client, key, meter="tool_calls")).status_code == 200


async def _cost_is(client: httpx.AsyncClient, key: str, n: int) -> bool:
    q = (await get(client, key, "/api/v2/quota")).json()
    return q["meters"]["upstream_cost_micros"]["used"] == n


async def test_per_minute_burst_is_rate_limited_with_retry_after(
    client, new_org: OrgFactory, send: Send
):
    org, key = await new_org("free")
    for _ in range(3):  # a minute may turn between sending and checking: try again then
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        if datetime.now(UTC) - minute > timedelta(seconds=55):
            continue_at = minute + timedelta(minutes=1, seconds=1)
            await _sleep_until(continue_at)
            minute = continue_at.replace(second=0)
        await send(*(make_event("gateway.request", org_id=org) for _ in range(10)))
        await eventually(lambda m=minute: _minute_used(client, key, m, 10), timeout=20)
        r = await check(client, key, meter="requests", model="gpt-4o-mini")
        if r.status_code == 200 and datetime.now(UTC) >= minute + timedelta(minutes=1):
            continue
        assert error(r) == (429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert "per-minute burst" in r.json()["error"]["message"]
        return
    pytest.fail("could not fill a minute in three tries")


async def _sleep_until(t: datetime) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, (t - datetime.now(UTC)).total_seconds()))


async def _minute_used(client: httpx.AsyncClient, key: str, minute: datetime, n: int) -> bool:
    r = (await get(client, key, "/api/v2/quota/requests")).json()
    start = datetime.fromisoformat(r["minute"]["window_start"])
    return start != minute or r["minute"]["used"] >= n


async def test_per_day_burst_is_rate_limited(client, new_org: OrgFactory, send: Send):
    org, key = await new_org("free")
    await send(*(make_event("gateway.request", org_id=org) for _ in range(500)))
    await eventually(lambda: _day_used(client, key, 500))
    r = await check(client, key, meter="requests", model="gpt-4o-mini")
    assert error(r) == (429, "rate_limited")
    assert "per-day burst" in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) <= 86_400


async def _day_used(client: httpx.AsyncClient, key: str, n: int) -> bool:
    return (await get(client, key, "/api/v2/quota/requests")).json()["day"]["used"] == n


async def test_model_whitelist_default_model_and_byok(client, new_org: OrgFactory):
    _, free = await new_org("free")
    r = await check(client, free, meter="requests", model="gpt-4o")
    assert error(r) == (403, "plan_limit_error")
    assert "gpt-4o-mini" in r.json()["error"]["message"]
    assert (await check(client, free, meter="requests", model="gpt-4o-mini")).status_code == 200
    r = await check(client, free, meter="requests", model="gpt-4o", mode="byok")
    assert error(r) == (403, "plan_limit_error") and "BYOK" in r.json()["error"]["message"]

    # The workspace default model stands in when the request names none.
    assert (await check(client, free, meter="requests")).status_code == 200
    r = await client.put(
        "/api/v2/workspace", json={"default_model": "gpt-4o"}, headers=bearer(free)
    )
    assert r.status_code == 200 and r.json()["default_model"] == "gpt-4o"
    assert (await get(client, free, "/api/v2/workspace")).json()["default_model"] == "gpt-4o"
    r = await check(client, free, meter="requests")
    assert error(r) == (403, "plan_limit_error")
    assert "default model" in r.json()["error"]["message"]
    assert "dashboard" in r.json()["error"]["message"]
    await client.put("/api/v2/workspace", json={"default_model": None}, headers=bearer(free))
    assert (await check(client, free, meter="requests")).status_code == 200

    # BYOK lifts the whitelist where the plan offers it.
    _, pro = await new_org("pro")
    assert error(await check(client, pro, meter="requests", model="gpt-4o")) == (
        403,
        "plan_limit_error",
    )
    r = await check(client, pro, meter="requests", model="gpt-4o", mode="byok")
    assert r.status_code == 200, r.text


async def test_test_keys_are_never_capped(client, new_org: OrgFactory, send: Send):
    org, live = await new_org("free")
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "test"}, headers=ADMIN)
    test = r.json()["key"]
    await send(*(make_event("session.started", org_id=org, session_id=f"s{i}") for i in range(3)))
    await eventually(lambda: _used_active(client, live, 3))
    assert error(await check(client, live, meter="sessions")) == (429, "concurrency_limit")
    assert (await check(client, test, meter="sessions")).status_code == 200
    # Test-key sessions never count either.
    await send(make_event("session.started", org_id=org, session_id="t1", key_mode="test"))
    await send(make_event("session.ended", org_id=org, session_id="s0"))
    await eventually(lambda: _used_active(client, live, 2))


async def _used_active(client: httpx.AsyncClient, key: str, n: int, query: str = "") -> bool:
    return (await get(client, key, "/api/v2/sessions/quota" + query)).json()["active"] == n


async def test_trial_ended_and_past_due_refuse_runs_but_not_reads(client, new_org: OrgFactory):
    org, key = await new_org("pro")
    url = f"/api/v2/admin/orgs/{org}/subscription/status"
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=7)).isoformat()

    r = await client.put(url, json={"status": "trial", "trial_ends_at": future}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "trial"
    assert (await check(client, key, meter="tool_calls")).status_code == 200

    r = await client.put(url, json={"status": "trial", "trial_ends_at": past}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = await check(client, key, meter="tool_calls")
    assert error(r) == (402, "payment_required")
    assert "trial ended" in r.json()["error"]["message"]
    q = (await get(client, key, "/api/v2/quota")).json()
    assert q["status"] == "trial" and q["trial_ends_at"] is not None

    await client.put(url, json={"status": "past_due"}, headers=ADMIN)
    r = await check(client, key, meter="sessions")
    assert error(r) == (402, "payment_required") and "past due" in r.json()["error"]["message"]
    assert (await get(client, key, "/api/v2/quota")).json()["status"] == "past_due"
    assert (await get(client, key, "/api/v2/quota/tokens")).status_code == 200

    await client.put(url, json={"status": "active"}, headers=ADMIN)
    assert (await check(client, key, meter="sessions")).status_code == 200


async def test_bad_check_requests_are_invalid_request(client, new_org: OrgFactory):
    _, key = await new_org("free")
    for body in (
        {"meter": "tokens", "amount": 0},
        {"meter": "bananas"},
        {"meter": "tokens", "mode": "stolen"},
        {"meter": "tokens", "colour": "red"},
        {},
    ):
        r = await check(client, key, **body)
        assert error(r) == (422, "invalid_request"), body
    r = await client.post(
        "/api/v2/quota/check",
        content=b"{not json",
        headers=bearer(key) | {"content-type": "application/json"},
    )
    assert error(r) == (422, "invalid_request")


async def test_every_quota_endpoint_needs_a_key(client):
    for method, path in (
        ("GET", "/api/v2/quota"),
        ("GET", "/api/v2/quota/tokens"),
        ("GET", "/api/v2/quota/tool-calls"),
        ("GET", "/api/v2/quota/requests"),
        ("GET", "/api/v2/sessions/quota"),
        ("GET", "/api/v2/limits"),
        ("GET", "/api/v2/workspace"),
        ("PUT", "/api/v2/workspace"),
        ("POST", "/api/v2/quota/check"),
    ):
        r = await client.request(method, path, json={"meter": "tokens"})
        assert error(r) == (401, "unauthorized"), path
        r = await client.request(method, path, json={}, headers=bearer("tk_live_0123456789ab_x"))
        assert error(r) == (401, "unauthorized"), path


QUOTA_READS = (
    "/api/v2/quota/tokens",
    "/api/v2/quota/tool-calls",
    "/api/v2/quota/requests",
    "/api/v2/quota/runs",
    "/api/v2/sessions/quota",
)


async def test_the_fast_path_answers_what_the_routes_answer(
    client, new_org: OrgFactory, send: Send
):
    org, key = await new_org("free")
    await send(make_event(org_id=org, input_tokens=7, output_tokens=0))
    await send(make_event("session.started", org_id=org, session_id="s1"))
    await eventually(lambda: _tokens_are(client, key, 7))
    for path in QUOTA_READS:
        fast = await client.get(path, headers=bearer(key))
        # A query string (ignored by the route) sends the read through FastAPI.
        routed = await client.get(path + "?via=route", headers=bearer(key))
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content), path
        same = {k: v for k, v in fast.headers.items() if k != "x-tally-staleness-ms"}
        assert same == {k: v for k, v in routed.headers.items() if k != "x-tally-staleness-ms"}
        assert "x-tally-staleness-ms" in fast.headers and fast.json()


async def test_the_fast_path_leaves_everything_unusual_to_the_routes(stack, new_org):
    from api.app import create_app
    from api.fastpath import QuotaFastPath

    _, key = await new_org("free")
    api = create_app(stack.services)
    passed: list[str] = []

    async def routes(scope, receive, send):  # stands for the FastAPI routes behind
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=QuotaFastPath(routes, api))
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as c:
        for path in QUOTA_READS:
            assert (await c.get(path, headers=bearer(key))).status_code == 200
            assert (await c.get(path, headers={"authorization": f"bearer {key}"})).json()
        assert passed == []
        for request in (
            c.get(QUOTA_READS[0]),
            c.get(QUOTA_READS[0], headers=bearer("tk_live_0123456789ab_x")),
            c.get(QUOTA_READS[0], headers={"authorization": f"Basic {key}"}),
            c.get(QUOTA_READS[0] + "?x=1", headers=bearer(key)),
            c.post(QUOTA_READS[0], headers=bearer(key)),
            c.get("/api/v2/quota", headers=bearer(key)),
        ):
            assert (await request).status_code == 418
        assert len(passed) == 6


async def _tokens_are(client, key: str, n: int) -> bool:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    return r.json()["used"] == n


async def test_a_quota_read_never_answers_from_before_a_change(
    client, new_org: OrgFactory, send: Send
):
    """Reads are answered from a kept answer while nothing it was made of has changed: a
    plan change, overrides, usage, a session or another org's traffic shows at once."""
    org, key = await new_org("free")
    other, other_key = await new_org("free")

    async def limits() -> dict[str, object]:
        return {path: (await get(client, key, path)).json().get("limit") for path in QUOTA_READS}

    assert await limits() == {
        "/api/v2/quota/tokens": 15_000_000,
        "/api/v2/quota/tool-calls": 1000,
        "/api/v2/quota/requests": 10_000,
        "/api/v2/quota/runs": 500,
        "/api/v2/sessions/quota": 3,
    }
    assert (await limits())["/api/v2/quota/tokens"] == 15_000_000  # the kept answers
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/subscription", json={"plan": "developer"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert (await limits())["/api/v2/quota/tokens"] == 65_000_000  # the very next read
    assert (await limits())["/api/v2/sessions/quota"] == 10

    r = await client.put(
        f"/api/v2/admin/orgs/{org}/subscription", json={"plan": "enterprise"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/overrides",
        json={"tokens_per_period": 7_000_000, "runs_per_month": 3},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    assert (await limits())["/api/v2/quota/tokens"] == 7_000_000
    assert (await limits())["/api/v2/quota/runs"] == 3

    # Usage: the kept answer goes as soon as the counters move; another org's stays its own.
    await get(client, other_key, "/api/v2/quota/tokens")
    await send(make_event(org_id=org, input_tokens=40, output_tokens=2))
    await send(make_event("session.started", org_id=org, session_id="kept-1"))
    # Waited for through the routes (a query string): then the fast path's next answer.
    await eventually(lambda: _used(client, key, "/api/v2/quota/tokens?via=route", 42))
    await eventually(lambda: _used_active(client, key, 1, "?via=route"))
    assert (await get(client, key, "/api/v2/sessions/quota")).json()["active"] == 1
    tokens = (await get(client, key, "/api/v2/quota/tokens")).json()
    assert (tokens["used"], tokens["remaining"]) == (42, 7_000_000 - 42)
    runs = (await get(client, key, "/api/v2/quota/runs")).json()  # two events, two runs
    assert (runs["used"], runs["remaining"]) == (2, 1)
    assert (await get(client, other_key, "/api/v2/quota/tokens")).json()["used"] == 0


async def test_the_app_runs_a_lifespan_in_front_of_the_fast_path(stack):
    """The quota reads are answered in front of FastAPI; every other scope reaches it,
    lifespan events included."""
    import contextlib

    from api.app import create_app

    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("started")
        yield
        events.append("stopped")

    app = create_app(stack.services, lifespan=lifespan)
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive():
        return next(incoming)

    async def send(message):
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert events == ["started", "stopped"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
