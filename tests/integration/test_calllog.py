"""The call log over the real broker and chDB: pages, filters, billing marks, retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import OrgFactory, Send, bearer, rows_reach, stored_rows
from tests.factories import make_event


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def walk(
    client: httpx.AsyncClient, key: str, params: dict[str, Any], pause: float = 0.0
) -> list[dict[str, Any]]:
    """Every page of one walk through the log, in order."""
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/v2/logs/events", params=query, headers=bearer(key))
        assert r.status_code == 200, r.text
        body = r.json()
        seen.extend(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        await asyncio.sleep(pause)


async def test_paging_while_events_arrive_skips_and_repeats_nothing(
    client, stack, new_org: OrgFactory, send: Send
):
    org, key = await new_org(plan="pro")
    now = datetime.now(UTC)
    # Events spread over the last two days, several sharing a millisecond (the event_id
    # breaks the tie), then a producer that keeps sending during the walk: new events and
    # late ones whose ts falls among the pages already read.
    first = []
    for i in range(240):
        ts = now - timedelta(minutes=11 * (i // 3))
        first.append(make_event("tool.call", org_id=org, ts=iso(ts), success=i % 7 != 0))
    await send(*first)
    await rows_reach(stack, org, len(first))

    stop = asyncio.Event()
    sent_during: list[dict[str, Any]] = []

    async def keep_sending() -> None:
        i = 0
        while not stop.is_set():
            fresh = make_event("tool.call", org_id=org, ts=iso(datetime.now(UTC)))
            late = make_event("tool.call", org_id=org, ts=iso(now - timedelta(minutes=7 * i)))
            await send(fresh, late)
            sent_during.extend([fresh, late])
            i += 1
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(keep_sending())
    try:
        pages = await walk(client, key, {"limit": 17, "type": "tool.call"}, pause=0.1)
    finally:
        stop.set()
        await sender
    await rows_reach(stack, org, len(first) + len(sent_during), timeout=30)

    ids = [e["event_id"] for e in pages]
    assert len(ids) == len(set(ids)), "an event was listed twice"
    assert {e["event_id"] for e in first} <= set(ids), "an event stored before the walk is missing"
    order = [(e["ts"], e["event_id"]) for e in pages]
    assert order == sorted(order, reverse=True)
    assert len(sent_during) > 10  # the producer really sent while the walk went on
    # A new walk lists everything, the events sent during the first included, each once.
    again = await walk(client, key, {"limit": 100})
    assert sorted(e["event_id"] for e in again) == sorted(
        e["event_id"] for e in first + sent_during
    )


async def test_each_entry_carries_its_fields_cost_and_billing(
    client, stack, new_org: OrgFactory, send: Send
):
    org, key = await new_org()
    t = datetime.now(UTC) - timedelta(minutes=5)
    llm = make_event(org_id=org, ts=iso(t), agent_id="writer", run_id="r-9", input_tokens=1000)
    failed = make_event("tool.call", org_id=org, ts=iso(t + timedelta(seconds=1)), success=False)
    test = make_event("tool.call", org_id=org, ts=iso(t + timedelta(seconds=2)), key_mode="test")
    ok = make_event("tool.call", org_id=org, ts=iso(t + timedelta(seconds=3)), connector="slack")
    await send(llm, failed, test, ok)
    await rows_reach(stack, org, 4)

    r = await client.get("/api/v2/logs/events", headers=bearer(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    by_id = {e["event_id"]: e for e in body["events"]}
    assert [e["event_id"] for e in body["events"]] == [
        ok["event_id"],
        test["event_id"],
        failed["event_id"],
        llm["event_id"],
    ]
    first = by_id[llm["event_id"]]
    assert first["model"] == "gpt-4o" and first["input_tokens"] == 1000
    assert (first["agent_id"], first["run_id"]) == ("writer", "r-9")
    assert first["billed"] is True and first["not_billed_reason"] is None
    assert first["cost_micros"] > 0
    assert by_id[failed["event_id"]]["not_billed_reason"] == "failed"
    assert by_id[failed["event_id"]]["status"] == "failed"
    assert by_id[test["event_id"]]["not_billed_reason"] == "test_key"
    assert by_id[ok["event_id"]]["connector"] == "slack" and by_id[ok["event_id"]]["billed"]
    # The entries' cost adds up to the breakdown of the same day.
    day = t.date()
    r = await client.get(
        "/api/v2/usage/breakdown",
        params={"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()},
        headers=bearer(key),
    )
    assert r.json()["total"]["cost_micros"] == sum(e["cost_micros"] for e in body["events"])

    failed_only = await client.get(
        "/api/v2/logs/events", params={"status": "failed"}, headers=bearer(key)
    )
    assert [e["event_id"] for e in failed_only.json()["events"]] == [failed["event_id"]]
    by_run = await client.get("/api/v2/logs/events", params={"run_id": "r-9"}, headers=bearer(key))
    assert [e["event_id"] for e in by_run.json()["events"]] == [llm["event_id"]]


async def test_a_day_of_tool_calls_pages_and_other_orgs_stay_out(
    client, stack, new_org: OrgFactory, send: Send
):
    org, key = await new_org()
    other, _ = await new_org()
    yesterday = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0)
    calls = [
        make_event("tool.call", org_id=org, ts=iso(yesterday + timedelta(seconds=i)))
        for i in range(25)
    ]
    today = make_event("tool.call", org_id=org)
    await send(*calls, today, make_event("tool.call", org_id=other, ts=iso(yesterday)))
    await rows_reach(stack, org, 26)
    assert await stored_rows(stack, other) == 1
    day = yesterday.date()
    params = {
        "type": "tool.call",
        "from": day.isoformat(),
        "to": (day + timedelta(days=1)).isoformat(),
        "limit": 10,
    }
    pages = await walk(client, key, params)
    assert [e["event_id"] for e in pages] == [e["event_id"] for e in reversed(calls)]


async def test_ranges_older_than_the_plan_keeps_are_refused_naming_the_retention(
    client, new_org: OrgFactory
):
    _, key = await new_org()  # free: 7 days
    old = (datetime.now(UTC) - timedelta(days=30)).date()
    r = await client.get(
        "/api/v2/logs/events", params={"from": old.isoformat()}, headers=bearer(key)
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "outside_retention"
    assert "7 days" in error["message"]
    r = await client.get("/api/v2/logs/events", params={"cursor": "nope"}, headers=bearer(key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
