"""Seeing and ending sessions over the API, on the real broker and chDB: the live sessions
with their leases, and a DELETE that frees a slot at once, recorded as `ended_by_api`."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from tests.conftest import bearer, eventually, rows_reach
from tests.factories import make_event
from tests.integration.ops import serve, tally


async def test_live_sessions_are_listed_with_their_expiry_and_a_delete_frees_a_slot(
    stack, client, new_org, send
):
    org, key = await new_org(plan="free")  # 3 concurrent sessions
    started = [
        make_event("session.started", org_id=org, session_id=f"s{i}", run_id=f"run-{i}")
        for i in range(3)
    ]
    await send(*started)  # the runtime then dies without ending them
    await rows_reach(stack, org, 3)

    async def listed() -> list | None:
        r = await client.get("/api/v2/sessions", headers=bearer(key))
        assert r.status_code == 200, r.text
        sessions = r.json()["sessions"]
        return sessions if len(sessions) == 3 else None

    sessions = await eventually(listed)
    assert [s["session_id"] for s in sessions] == ["s0", "s1", "s2"]
    for s, e in zip(sessions, started, strict=True):
        seen = datetime.fromisoformat(s["last_seen_at"])
        assert s["run_id"] == e["run_id"] and s["agent_id"] == e["agent_id"]
        assert datetime.fromisoformat(s["expires_at"]) == seen + timedelta(seconds=900)

    check = {"meter": "sessions"}

    async def full() -> bool:
        r = await client.post("/api/v2/quota/check", json=check, headers=bearer(key))
        return r.status_code == 429 and r.json()["error"]["code"] == "concurrency_limit"

    await eventually(full)

    r = await client.delete("/api/v2/sessions/s1", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["reason"] == "ended_by_api"
    # Stored before the answer: the slot is free at once, and the list no longer has it.
    r = await client.post("/api/v2/quota/check", json=check, headers=bearer(key))
    assert r.status_code == 200, r.text
    r = await client.get("/api/v2/sessions", headers=bearer(key))
    assert [s["session_id"] for s in r.json()["sessions"]] == ["s0", "s2"]
    r = await client.get("/api/v2/runs/run-1/usage", headers=bearer(key))
    assert {(li["line_item"], li["item"]) for li in r.json()["line_items"]} == {
        ("sessions", ""),
        ("sessions", "ended_by_api"),
    }
    # Ending it again: it is not live any more.
    r = await client.delete("/api/v2/sessions/s1", headers=bearer(key))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # Another org's key sees none of them.
    _, other = await new_org(plan="free")
    r = await client.get("/api/v2/sessions", headers=bearer(other))
    assert r.json()["sessions"] == []
    assert (await client.delete("/api/v2/sessions/s0", headers=bearer(other))).status_code == 404


async def test_operators_list_and_end_an_orgs_sessions_with_tally_sessions(stack, new_org, send):
    org, _ = await new_org(plan="free")
    await send(make_event("session.started", org_id=org, session_id="op-1", agent_id="bot"))
    await rows_reach(stack, org, 1)
    async with serve(stack) as url:
        run = await tally("sessions", "list", org, "--api-url", url)
        assert run.code == 0, run.err
        assert "1 live sessions" in run.out and "op-1" in run.out and "bot" in run.out
        run = await tally("sessions", "end", org, "op-1", "--api-url", url)
        assert run.code == 0 and "ended_by_api" in run.out, run.err
        run = await tally("sessions", "list", org, "--api-url", url, "--json")
        assert run.code == 0 and orjson.loads(run.out)["sessions"] == []
        run = await tally("sessions", "end", org, "op-1", "--api-url", url)
        assert run.code == 1 and "404" in run.err
