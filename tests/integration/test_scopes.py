"""Who may see what: every org route declares a scope, and a key without it is refused."""

from __future__ import annotations

import re
from typing import Any

import httpx

from api.app import create_app
from api.auth import api_routes, is_admin_route, route_scope
from schemas.access import SCOPES
from tally.domain.keys import hash_key
from tests.conftest import ADMIN_KEY, OrgFactory, bearer, eventually
from tests.factories import make_event

ADMIN = bearer(ADMIN_KEY)
# Routes anyone may call: the process's health and metrics, the dashboard's static page (it
# asks for a key and calls the API with it), the public plan catalogue and the API docs.
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/dashboard",
    "/dashboard/{name}",
    "/api/v2/plans",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}


async def key_with(client: httpx.AsyncClient, org: str, scopes: list[str]) -> str:
    r = await client.post(
        f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live", "scopes": scopes}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    assert r.json()["scopes"] == scopes
    key: str = r.json()["key"]
    return key


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_every_route_declares_a_scope_and_refuses_a_key_without_it(
    stack, client, new_org: OrgFactory
):
    org, _ = await new_org(plan="scale")
    app = create_app(stack.services)
    keys = {s: await key_with(client, org, [x for x in SCOPES if x != s]) for s in SCOPES}
    only = {s: await key_with(client, org, [s]) for s in SCOPES}
    every = await key_with(client, org, list(SCOPES))
    scoped = 0
    for route in api_routes(app):
        scope = route_scope(route)
        admin = is_admin_route(route)
        assert scope is not None or admin or route.path_format in PUBLIC, (
            f"{sorted(route.methods)} {route.path_format} declares no scope: give it "
            "Depends(require_scope(...)) (api/auth.py), or require_admin"
        )
        for method in sorted(route.methods):
            path = _concrete(route.path_format)
            body = {} if method in ("POST", "PUT", "PATCH") else None
            if scope is not None:
                scoped += 1
                r = await client.request(method, path, json=body, headers=bearer(keys[scope]))
                assert r.status_code == 403, (method, route.path_format, r.status_code, r.text)
                assert r.json()["error"]["code"] == "forbidden"
                assert repr(scope) in r.json()["error"]["message"], r.text
                # The scope alone gets past the check (the answer may still be a 404 or a 422).
                r = await client.request(method, path, json=body, headers=bearer(only[scope]))
                assert r.status_code != 403 or "scope" not in r.text, (
                    method,
                    route.path_format,
                    r.text,
                )
            elif admin:
                r = await client.request(method, path, json=body, headers=bearer(every))
                assert r.status_code == 401, (method, route.path_format, r.status_code, r.text)
    assert scoped >= 17
    doc = app.openapi()
    op = doc["paths"]["/api/v2/credits"]["get"]
    assert op["x-required-scope"] == "billing:read"
    assert "forbidden" in op["responses"]["403"]["content"]["application/json"]["examples"]


async def test_a_runtime_key_sends_events_and_checks_quotas_but_cannot_read_billing(
    client, new_org: OrgFactory
):
    org, _ = await new_org(plan="scale")
    runtime = await key_with(client, org, ["events:write", "quota:read"])
    writer = await key_with(client, org, ["events:write"])
    event = make_event(org_id=org, input_tokens=700, output_tokens=300)
    r = await client.post("/api/v2/events", json=[event], headers=bearer(runtime))
    assert r.status_code == 200, r.text

    async def used() -> int | None:
        r = await client.get("/api/v2/quota/tokens", headers=bearer(runtime))
        assert r.status_code == 200, r.text
        return r.json()["used"] if r.json()["used"] == 1000 else None

    assert await eventually(used) == 1000
    r = await client.post(
        "/api/v2/quota/check", json={"meter": "tokens", "amount": 10}, headers=bearer(runtime)
    )
    assert r.status_code == 200, r.text
    for key in (runtime, writer):
        r = await client.get("/api/v2/credits", headers=bearer(key))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert "'billing:read'" in r.json()["error"]["message"]
    # The fast path (a plain GET of a quota read) refuses a key without quota:read as well.
    r = await client.get("/api/v2/quota/tokens", headers=bearer(writer))
    assert r.status_code == 403 and "'quota:read'" in r.text, r.text


async def test_usage_read_shows_quantities_and_cost_only_with_billing_read(
    client, new_org: OrgFactory
):
    org, key = await new_org(plan="scale")
    usage = await key_with(client, org, ["usage:read"])
    event = make_event(org_id=org, input_tokens=1000, output_tokens=0)
    r = await client.post("/api/v2/events", json=[event], headers=bearer(key))
    assert r.status_code == 200, r.text

    async def total(k: str) -> dict[str, Any] | None:
        r = await client.get("/api/v2/usage/breakdown?group_by=day", headers=bearer(k))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if body["total"]["tokens"] == 1000 else None

    full = await eventually(lambda: total(key))
    assert full["total"]["cost_micros"] > 0
    partial = await total(usage)
    assert partial is not None
    assert partial["total"]["cost_micros"] is None
    assert [row["cost_micros"] for row in partial["rows"]] == [None]
    assert partial["total"]["input_tokens"] == full["total"]["input_tokens"] == 1000
    r = await client.get(f"/api/v2/runs/{event['run_id']}/usage", headers=bearer(usage))
    assert r.status_code == 200, r.text
    assert [line["cost_micros"] for line in r.json()["line_items"]] == [None]


async def test_keys_stored_before_scopes_keep_every_scope(stack, client, new_org: OrgFactory):
    org, _ = await new_org()
    key = "tk_live_0123456789ab_an-old-key-made-before-scopes-existed"
    # A row as the store held it before migration 011: no scopes column written.
    await stack.store.insert(
        "api_keys",
        [["0123456789ab", org, "live", hash_key(key), "2026-01-01 00:00:00", 0, 1]],
        ("key_id", "org_id", "mode", "key_hash", "created_at", "revoked", "version"),
    )
    await stack.services.registry.refresh()
    r = await client.get("/api/v2/credits", headers=bearer(key))
    assert r.status_code == 200, r.text
    r = await client.get(f"/api/v2/admin/orgs/{org}/keys", headers=ADMIN)
    old = [k for k in r.json()["keys"] if k["key_id"] == "0123456789ab"]
    assert old[0]["scopes"] == list(SCOPES)


async def test_admin_actions_are_in_the_audit_trail(client, new_org: OrgFactory):
    org, _ = await new_org()
    r = await client.get("/api/v2/admin/audit", params={"org_id": org}, headers=ADMIN)
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert [e["action"] for e in entries] == ["org.created", "key.issued"]
    actor = entries[0]["actor"]
    assert re.fullmatch(r"admin:[0-9a-f]{12}", actor) and ADMIN_KEY not in actor
    assert entries[0]["before"] is None and entries[0]["after"]["plan"] == "free"
    r = await client.get(
        "/api/v2/admin/audit", params={"org_id": org, "action": "key.issued"}, headers=ADMIN
    )
    assert [e["after"]["scopes"] for e in r.json()["entries"]] == [list(SCOPES)]
