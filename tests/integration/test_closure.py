"""Closing an account: keys stop at once, restore undoes it, the purge leaves nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer

from tally.config import COUNTERS_TOPIC
from tally.domain.counters import decode_key
from tally.store import purge
from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually, rows_reach
from tests.factories import make_event
from tests.integration.ops import serve, tally
from tests.integration.test_stream import dead_letters

ADMIN = bearer(ADMIN_KEY)
# The tables that held the org's data in this test; the purge finds them (and any a later
# migration adds) in the store's catalogue.
HELD = {
    "events",
    "event_ids",
    "usage_daily",
    "usage_runs",
    "usage_daily_items",
    "usage_daily_agents",
    "orgs",
    "api_keys",
    "subscription_changes",
    "workspace_settings",
    "credit_topups",
}


async def used(client, key: str) -> int | None:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 200, r.text
    value: int | None = r.json()["used"]
    return value


async def trail(client, org: str, action: str) -> list[dict]:
    r = await client.get(
        "/api/v2/admin/audit", params={"org_id": org, "action": action}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    entries: list[dict] = r.json()["entries"]
    return entries


async def counter_messages(bootstrap: str, org: str) -> dict[tuple, bytes | None]:
    """The last message of each of the org's keys on usage.counters."""
    consumer = AIOKafkaConsumer(
        COUNTERS_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = consumer.assignment() or set()
        while not parts:
            await consumer.getmany(timeout_ms=200)
            parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        last: dict[tuple, bytes | None] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for m in records:
                    if m.key and m.key.startswith(org.encode() + b"\x1f"):
                        last[decode_key(m.key)] = m.value
        return last
    finally:
        await consumer.stop()


async def test_closing_stops_keys_restore_undoes_it_and_the_purge_leaves_nothing(
    stack, client, new_org: OrgFactory, send: Send
):
    org, key = await new_org(plan="scale")
    events = [make_event(org_id=org, input_tokens=400, output_tokens=100) for _ in range(3)]
    r = await client.post("/api/v2/events", json=events, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert await eventually(lambda: _at(client, key, 1500)) == 1500
    await rows_reach(stack, org, 3)
    body = {"amount_micros": 5_000_000, "idempotency_key": "welcome", "note": ""}
    r = await client.post(f"/api/v2/admin/orgs/{org}/credits", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = await client.put(
        "/api/v2/workspace", json={"default_model": "gpt-4o-mini"}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/subscription", json={"plan": "pro"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text

    # Closing: the key stops at once, and so do the org's events.
    r = await client.delete(f"/api/v2/admin/orgs/{org}", headers=ADMIN)
    assert r.status_code == 200, r.text
    closed_at = datetime.fromisoformat(r.json()["closed_at"])
    assert datetime.fromisoformat(r.json()["purge_after"]) == closed_at + timedelta(days=30)
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 401 and f"org {org!r} is closed" in r.text, r.text
    more = [make_event(org_id=org, input_tokens=1)]
    r = await client.post("/api/v2/events", json=more, headers=bearer(key))
    assert r.status_code == 401 and "closed" in r.json()["error"]["message"], r.text

    # An event sent straight to the broker (the emitter's way) is refused by the worker, to
    # the dead-letter topic with the reason, and not counted, once the worker has read the
    # closure (it reads closed orgs every TALLY_REGISTRY_REFRESH_S).
    async def worker_knows() -> bool:
        return all(org in st.closed for st in stack.worker.states.values())

    await eventually(worker_knows)
    marker = f"closed-{org}"
    await send(make_event(org_id=org, input_tokens=9, agent_id=marker))

    async def refused() -> list[dict] | None:
        found = await dead_letters(stack.settings.bootstrap_servers, marker)
        return found or None

    (dead,) = await eventually(refused, timeout=20)
    assert dead["error"].startswith(f"org_closed: org {org!r} is closed"), dead
    (entry,) = await trail(client, org, "org.closed")
    assert re.fullmatch(r"admin:[0-9a-f]{12}", entry["actor"])
    assert entry["before"]["closed_at"] is None and entry["after"]["closed_at"] is not None

    # Restoring within the grace period undoes it.
    r = await client.post(f"/api/v2/admin/orgs/{org}/restore", headers=ADMIN)
    assert r.status_code == 200 and r.json()["closed_at"] is None, r.text
    assert await used(client, key) == 1500  # the refused event was not counted
    assert await rows(stack, org, "events") == 3
    assert [e["action"] for e in await trail(client, org, "org.restored")] == ["org.restored"]

    # Closed again; the sweep leaves it alone for 30 days, then purges it.
    r = await client.delete(f"/api/v2/admin/orgs/{org}", headers=ADMIN)
    assert r.status_code == 200, r.text
    counters = stack.services.counters.keys_of(org)
    assert counters
    sweeper = stack.retention
    await sweeper.sweep(now=datetime.now(UTC) + timedelta(days=29))
    assert org in stack.services.registry.orgs
    assert await rows(stack, org, "events") == 3
    await sweeper.sweep(now=datetime.now(UTC) + timedelta(days=30, minutes=1))

    tables = [row[0] for row in await stack.store.query(*purge.tables_query())]
    assert set(tables) >= HELD, HELD - set(tables)
    for table in tables:
        assert await rows(stack, org, table) == 0, table
    assert stack.services.counters.keys_of(org) == []
    last = await counter_messages(stack.settings.bootstrap_servers, org)
    assert set(counters) <= set(last)
    assert all(last[k] is None for k in counters), "a counter without its tombstone"
    r = await client.get(f"/api/v2/admin/orgs/{org}/keys", headers=ADMIN)
    assert r.status_code == 404, r.text
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 401, r.text
    (purged,) = await trail(client, org, "org.purged")
    assert purged["actor"] == "tally:retention"
    assert set(purged["after"]["tables"]) == set(tables)
    # The trail keeps who closed it.
    assert [e["actor"] for e in await trail(client, org, "org.closed")] == [entry["actor"]] * 2


async def test_restoring_an_open_org_is_a_conflict(client, new_org: OrgFactory):
    org, _ = await new_org()
    r = await client.post(f"/api/v2/admin/orgs/{org}/restore", headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
    r = await client.delete("/api/v2/admin/orgs/no-such-org", headers=ADMIN)
    assert r.status_code == 404, r.text


async def _at(client, key: str, expected: int) -> int | None:
    value = await used(client, key)
    return value if value == expected else None


async def rows(stack, org: str, table: str) -> int:
    return int((await stack.store.query(*purge.rows_query(table, org)))[0][0])


async def test_operators_close_restore_purge_and_read_the_trail_with_tally_orgs(
    stack, client, new_org: OrgFactory
):
    org, key = await new_org()
    async with serve(stack) as url:
        run = await tally("orgs", "close", org, "--api-url", url)
        assert run.code == 0 and f"{org} closed at" in run.out, run.err
        r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
        assert r.status_code == 401, r.text
        run = await tally("orgs", "restore", org, "--api-url", url)
        assert run.code == 0 and "restored" in run.out, run.err
        assert await used(client, key) == 0
        run = await tally("orgs", "purge", "--api-url", url)  # nothing is due: grace of 30 days
        assert run.code == 0, run.err
        assert org in stack.services.registry.orgs
        run = await tally("orgs", "audit", "--org", org, "--api-url", url, "--json")
        assert run.code == 0, run.err
        actions = [e["action"] for e in orjson.loads(run.out)["entries"]]
        assert actions == ["org.created", "key.issued", "org.closed", "org.restored"]
