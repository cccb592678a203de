"""Plans, limits, subscriptions, Enterprise overrides and keys through the API."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY, OrgFactory, bearer
from tests.integration.test_quota_api import check, error

ADMIN = bearer(ADMIN_KEY)
SHIPPED = Path(__file__).parents[2] / "tally" / "data" / "plans.json"


def sub_url(org: str, tail: str = "") -> str:
    return f"/api/v2/admin/orgs/{org}/subscription{tail}"


async def put_plan(client: httpx.AsyncClient, org: str, plan: str) -> httpx.Response:
    return await client.put(sub_url(org), json={"plan": plan}, headers=ADMIN)


async def quota(client: httpx.AsyncClient, key: str) -> dict:
    r = await client.get("/api/v2/quota", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_plans_serve_the_catalogue_file(client):
    r = await client.get("/api/v2/plans")
    assert r.status_code == 200
    shipped = json.loads(SHIPPED.read_text())
    served = {p["name"]: p for p in r.json()["plans"]}
    assert list(served) == [p["name"] for p in shipped["plans"]]
    for plan in shipped["plans"]:
        for field, value in plan.items():
            assert served[plan["name"]][field] == value, (plan["name"], field)
    assert served["developer"]["tool_calls_per_month"] is None  # not limited: unlimited


async def test_limits_are_the_orgs_live_values(client, new_org: OrgFactory):
    org, key = await new_org("free", signup_date=date(2025, 1, 31))
    r = await client.get("/api/v2/limits", headers=bearer(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["org_id"], body["plan"], body["status"], body["billing_anchor"]) == (
        org,
        "free",
        "active",
        "2025-01-31",
    )
    limits = body["limits"]
    assert (limits["tokens_per_period"], limits["concurrent_sessions"]) == (15_000_000, 3)
    assert (limits["tool_calls_per_month"], limits["managed_models"]) == (1000, ["gpt-4o-mini"])
    assert body["overridden"] == []


async def test_upgrade_is_immediate_and_starts_the_billing_date(client, new_org: OrgFactory):
    org, key = await new_org("free", signup_date=date(2025, 3, 3))
    today = datetime.now(UTC).date()
    r = await put_plan(client, org, "developer")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["plan"], body["pending_change"], body["billing_anchor"]) == (
        "developer",
        None,
        today.isoformat(),
    )
    assert body["change"]["kind"] == "upgrade"
    assert body["change"]["effective_at"] == body["change"]["recorded_at"]
    q = await quota(client, key)
    assert q["plan"] == "developer" and q["meters"]["tokens"]["limit"] == 65_000_000
    assert q["meters"]["sessions"]["limit"] == 10
    assert q["window_start"] == f"{today}T00:00:00Z"


async def test_downgrade_and_cancel_wait_for_the_period_end(client, new_org: OrgFactory):
    org, key = await new_org("pro")
    q = await quota(client, key)
    end = q["window_end"]

    r = await put_plan(client, org, "starter")
    body = r.json()
    assert (body["plan"], body["pending_change"]) == (
        "pro",
        {"plan": "starter", "effective_at": end},
    )
    assert body["change"]["kind"] == "downgrade" and body["change"]["effective_at"] == end
    q = await quota(client, key)
    assert q["plan"] == "pro" and q["pending_change"] == {"plan": "starter", "effective_at": end}
    assert q["meters"]["requests"]["limit"] == 50_000  # Pro's allowances stay until then

    r = await client.delete(sub_url(org), headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["change"]["kind"] == "cancel"
    assert r.json()["pending_change"] == {"plan": "free", "effective_at": end}

    r = await put_plan(client, org, "pro")  # changed their mind: keep Pro
    assert r.json()["change"]["kind"] == "resume" and r.json()["pending_change"] is None
    r = await put_plan(client, org, "pro")
    assert r.status_code == 200 and r.json()["change"] is None  # nothing to change

    r = await client.get(sub_url(org), headers=ADMIN)
    history = r.json()["history"]
    assert [h["kind"] for h in history] == ["downgrade", "cancel", "resume"]
    assert all(h["recorded_at"] for h in history)


async def test_blocked_org_downgrades_to_free_at_once(client, new_org: OrgFactory):
    org, key = await new_org("pro")
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    r = await client.put(
        sub_url(org, "/status"), json={"status": "trial", "trial_ends_at": past}, headers=ADMIN
    )
    assert r.status_code == 200
    assert error(await check(client, key, meter="tool_calls")) == (402, "payment_required")
    r = await client.delete(sub_url(org), headers=ADMIN)
    assert (r.json()["plan"], r.json()["status"]) == ("free", "active")
    assert (await check(client, key, meter="tool_calls")).status_code == 200


async def test_subscription_errors(client, new_org: OrgFactory):
    org, _ = await new_org("free")
    assert error(await put_plan(client, org, "gold")) == (400, "unknown_plan")
    assert error(await put_plan(client, "no-such-org", "pro")) == (404, "not_found")
    assert error(await client.delete(sub_url(org), headers=ADMIN)) == (409, "conflict")
    r = await client.put(sub_url(org, "/status"), json={"status": "past_due"}, headers=ADMIN)
    assert error(r) == (400, "invalid_change")
    await put_plan(client, org, "pro")
    r = await client.put(sub_url(org, "/status"), json={"status": "trial"}, headers=ADMIN)
    assert error(r) == (400, "invalid_change") and "trial_ends_at" in r.json()["error"]["message"]
    r = await client.put(
        sub_url(org, "/status"),
        json={"status": "trial", "trial_ends_at": "2026-01-01T00:00"},
        headers=ADMIN,
    )
    assert error(r) == (422, "invalid_request")  # no offset: not a UTC instant
    assert error(await client.put(sub_url(org), json={}, headers=ADMIN)) == (422, "invalid_request")


async def test_enterprise_overrides(client, new_org: OrgFactory, send):
    org, key = await new_org("enterprise")
    limits = (await client.get("/api/v2/limits", headers=bearer(key))).json()["limits"]
    assert limits["tokens_per_period"] is None and limits["concurrent_sessions"] is None

    body = {"tokens_per_period": 2_000_000_000, "concurrent_sessions": 1, "api_keys": 2}
    r = await client.put(f"/api/v2/admin/orgs/{org}/overrides", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["tokens_per_period"] == 2_000_000_000
    r = await client.get("/api/v2/limits", headers=bearer(key))
    assert sorted(r.json()["overridden"]) == [
        "api_keys",
        "concurrent_sessions",
        "tokens_per_period",
    ]
    q = await quota(client, key)
    assert q["meters"]["tokens"]["limit"] == 2_000_000_000
    assert q["meters"]["sessions"]["limit"] == 1
    assert (await check(client, key, meter="sessions")).status_code == 200
    assert error(await check(client, key, meter="sessions")) == (429, "concurrency_limit")

    r = await client.get(f"/api/v2/admin/orgs/{org}/overrides", headers=ADMIN)
    assert r.json()["overrides"] == {
        "tokens_per_period": 2_000_000_000,
        "concurrent_sessions": 1,
        "tool_calls_per_month": None,
        "requests_per_month": None,
        "requests_per_minute": None,
        "requests_per_day": None,
        "upstream_cost_micros_per_month": None,
        "runs_per_month": None,
        "managed_models": None,
        "byok": False,
        "api_keys": 2,
        "log_retention_days": None,
        "cache_ttl_hours": None,
        "semantic_vector_pool": None,
        "workspaces": None,
        "included_credits_micros": 0,
    }
    bad = {"requests_per_minute": 100, "requests_per_day": 10}
    r = await client.put(f"/api/v2/admin/orgs/{org}/overrides", json=bad, headers=ADMIN)
    assert error(r) == (400, "invalid_change")
    r = await client.put(f"/api/v2/admin/orgs/{org}/overrides", json={}, headers=ADMIN)
    assert r.json()["limits"]["tokens_per_period"] is None

    free, _ = await new_org("free")
    r = await client.put(f"/api/v2/admin/orgs/{free}/overrides", json=body, headers=ADMIN)
    assert error(r) == (409, "conflict")


async def test_keys_list_revoke_and_plan_count(client, new_org: OrgFactory):
    org, key = await new_org("free")
    keys_url = f"/api/v2/admin/orgs/{org}/keys"
    r = await client.post(keys_url, json={"mode": "live"}, headers=ADMIN)
    assert error(r) == (403, "plan_limit_error")  # Free: one live key
    assert "revoke one" in r.json()["error"]["message"]
    assert (await client.post(keys_url, json={"mode": "test"}, headers=ADMIN)).status_code == 201

    listed = (await client.get(keys_url, headers=ADMIN)).json()["keys"]
    assert [k["mode"] for k in listed] == ["live", "test"]
    fields = {"key_id", "org_id", "mode", "scopes", "created_at", "revoked"}
    assert all(set(k) == fields for k in listed)
    assert key not in json.dumps(listed)  # never the secret

    live_id = listed[0]["key_id"]
    r = await client.delete(f"{keys_url}/{live_id}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert error(r) == (401, "unauthorized")
    assert (await client.delete(f"{keys_url}/{live_id}", headers=ADMIN)).status_code == 200
    r = await client.post(keys_url, json={"mode": "live"}, headers=ADMIN)
    assert r.status_code == 201, r.text

    r = await client.get("/api/v2/admin/orgs/no-such-org/keys", headers=ADMIN)
    assert error(r) == (404, "not_found")


async def test_no_cross_org_access(client, new_org: OrgFactory):
    org_a, key_a = await new_org("free")
    org_b, key_b = await new_org("pro")
    id_b = (await client.get(f"/api/v2/admin/orgs/{org_b}/keys", headers=ADMIN)).json()["keys"][0][
        "key_id"
    ]
    # Another org's key id under this org's path is not found, and stays valid.
    r = await client.delete(f"/api/v2/admin/orgs/{org_a}/keys/{id_b}", headers=ADMIN)
    assert error(r) == (404, "not_found")
    assert (await client.get("/api/v2/quota", headers=bearer(key_b))).status_code == 200

    # An org key is never an admin key.
    for method, path, body in (
        ("GET", f"/api/v2/admin/orgs/{org_b}/keys", None),
        ("DELETE", f"/api/v2/admin/orgs/{org_b}/keys/{id_b}", None),
        ("POST", f"/api/v2/admin/orgs/{org_b}/keys", {"mode": "live"}),
        ("GET", f"/api/v2/admin/orgs/{org_b}/subscription", None),
        ("PUT", f"/api/v2/admin/orgs/{org_b}/subscription", {"plan": "free"}),
        ("DELETE", f"/api/v2/admin/orgs/{org_b}/subscription", None),
        ("PUT", f"/api/v2/admin/orgs/{org_b}/subscription/status", {"status": "past_due"}),
        ("GET", f"/api/v2/admin/orgs/{org_b}/overrides", None),
        ("PUT", f"/api/v2/admin/orgs/{org_b}/overrides", {}),
    ):
        r = await client.request(method, path, json=body, headers=bearer(key_a))
        assert error(r) == (401, "unauthorized"), (method, path)

    # Each key reads and changes its own org only.
    assert (await quota(client, key_a))["org_id"] == org_a
    assert (await quota(client, key_b))["plan"] == "pro"
    await client.put("/api/v2/workspace", json={"default_model": "x"}, headers=bearer(key_a))
    r = await client.get("/api/v2/workspace", headers=bearer(key_b))
    assert r.json() == {"org_id": org_b, "default_model": None}
    assert (await client.get("/api/v2/limits", headers=bearer(key_a))).json()["org_id"] == org_a


async def test_subscriptions_survive_a_reload_from_the_store(client, new_org: OrgFactory, stack):
    org, key = await new_org("pro")
    await put_plan(client, org, "starter")
    await client.put(sub_url(org, "/status"), json={"status": "past_due"}, headers=ADMIN)
    await client.put("/api/v2/workspace", json={"default_model": "gpt-4o"}, headers=bearer(key))
    ent, _ = await new_org("enterprise")
    body = {"tool_calls_per_month": 7}
    await client.put(f"/api/v2/admin/orgs/{ent}/overrides", json=body, headers=ADMIN)
    before = (await client.get(sub_url(org), headers=ADMIN)).json()

    accounts = stack.services.registry.accounts
    accounts.changes, accounts.overrides, accounts.default_models = {}, {}, {}
    await stack.services.registry.refresh()

    assert (await client.get(sub_url(org), headers=ADMIN)).json() == before
    assert accounts.default_models[org] == "gpt-4o"
    assert accounts.overrides[ent].tool_calls_per_month == 7


async def test_docs_render(client):
    r = await client.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text
    doc = (await client.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op.get("summary") and op.get("description"), (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and path.startswith("/api/"):
                    content = response["content"]["application/json"]
                    assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, path
                    assert content["examples"], (method, path, status)
