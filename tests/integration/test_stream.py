"""The worker against the real broker and chDB: dead letters, outages, sessions, late events."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer

from tally import failpoints
from tally.config import DLQ_TOPIC
from tally.domain import counters
from tests.conftest import OrgFactory, Send, bearer, eventually, rows_reach, stored_rows
from tests.factories import make_event


async def used(client, key: str) -> int:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["used"]


async def dead_letters(bootstrap: str, marker: str) -> list[dict]:
    consumer = AIOKafkaConsumer(
        DLQ_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        found = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                found += [orjson.loads(m.value) for m in msgs if marker.encode() in m.value]
        return found
    finally:
        await consumer.stop()


async def test_each_malformed_message_reaches_the_dlq_with_its_reason(stack, send: Send):
    marker = uuid.uuid4().hex
    await send(f"not json {marker}".encode(), key=b"k")
    await send(make_event(org_id=f"o-{marker}", input_tokens=-1))
    await send(make_event(org_id=f"o-{marker}", ts="2026-11-23T10:00:00"))  # no offset
    await send(make_event(org_id=f"o-{marker}", type="tool.call", success="maybe"))

    async def all_four() -> list[dict] | None:
        found = await dead_letters(stack.settings.bootstrap_servers, marker)
        return found if len(found) == 4 else None

    found = await eventually(all_four, timeout=20)
    errors = sorted(d["error"] for d in found)
    assert any(e.startswith("event: is not valid JSON") for e in errors)
    assert any("input_tokens: must be greater than or equal to 0" in e for e in errors)
    assert any(e.startswith("ts: must carry a UTC offset") for e in errors)
    assert any(e.startswith("success: must be a valid boolean") for e in errors)
    for d in found:
        assert marker in d["value"] and d["partition"] >= 0 and d["offset"] >= 0


async def test_store_outage_loses_nothing_and_quota_reads_keep_answering(
    client, new_org: OrgFactory, send: Send, stack
):
    org, key = await new_org()
    await send(make_event(org_id=org, input_tokens=100, output_tokens=0))
    await eventually(lambda: _is(client, key, 100))
    await rows_reach(stack, org, 1)  # stored before the store goes down
    failpoints.enable("store.insert", "error")
    try:
        await send(*[make_event(org_id=org, input_tokens=10, output_tokens=1) for _ in range(50)])
        # The counters go out before the insert: reads answer and keep counting...
        await eventually(lambda: _is(client, key, 100 + 50 * 11), timeout=20)
        for _ in range(5):  # ...while nothing of the 50 is stored and the worker stays put
            await asyncio.sleep(1)
            assert await stored_rows(stack, org) == 1
            assert await used(client, key) == 100 + 50 * 11
        assert stack.worker.sink.failures > 0
    finally:
        failpoints.disable("store.insert")
    await rows_reach(stack, org, 51)
    assert await used(client, key) == 100 + 50 * 11


async def _is(client, key: str, expected: int) -> bool:
    return await used(client, key) == expected


async def test_a_fault_in_the_worker_loop_loses_nothing_and_counts_nothing_twice(
    client, new_org: OrgFactory, send: Send, stack
):
    org, key = await new_org()
    faults = stack.worker.faults
    failpoints.enable("worker.before_insert", "error", nth=1)  # the next insert fails
    try:
        await send(*[make_event(org_id=org, input_tokens=10, output_tokens=0) for _ in range(20)])

        async def faulted() -> bool:
            return stack.worker.faults == faults + 1

        await eventually(faulted)
    finally:
        failpoints.disable("worker.before_insert")
    # The worker rebuilt its partitions from the store and read the batch again.
    await rows_reach(stack, org, 20)
    await eventually(lambda: _is(client, key, 200))
    await send(*[make_event(org_id=org, input_tokens=10, output_tokens=0) for _ in range(5)])
    await rows_reach(stack, org, 25)
    await eventually(lambda: _is(client, key, 250))
    assert stack.worker.faults == faults + 1


async def test_a_failed_offset_commit_is_no_fault(client, new_org: OrgFactory, send: Send, stack):
    org, key = await new_org()
    faults = stack.worker.faults
    failpoints.enable("worker.after_publish", "error", nth=1)  # the next commit fails
    try:
        await send(*[make_event(org_id=org, input_tokens=10, output_tokens=0) for _ in range(20)])
        await rows_reach(stack, org, 20)
        # The failed commit is seen when the next batch completes: the ones after it count.
        for n in (21, 22):
            await send(make_event(org_id=org, input_tokens=10, output_tokens=0))
            await rows_reach(stack, org, n)
        await eventually(lambda: _is(client, key, 220))
    finally:
        failpoints.disable("worker.after_publish")
    assert stack.worker.faults == faults  # the offsets are informational: the loop went on


async def test_sessions_are_counted_through_duplicates_and_reordering(
    new_org: OrgFactory, send: Send, stack
):
    org, _ = await new_org()
    table = stack.services.counters
    started = {s: make_event("session.started", org_id=org, session_id=s) for s in "abcd"}
    ended = {s: make_event("session.ended", org_id=org, session_id=s) for s in "abcd"}
    # d ends before it starts; b's start arrives three times; c is test traffic.
    started["c"]["key_mode"] = ended["c"]["key_mode"] = "test"
    await send(ended["d"], started["a"], started["b"], started["b"], started["c"], started["d"])
    await send(started["b"], ended["a"], ended["a"])
    marker = make_event(org_id=org, input_tokens=1, output_tokens=0)
    await send(marker)

    async def active_is_one() -> bool:
        return (
            table.get((org, counters.SESSIONS, 0)) == 1
            and table.get((org, counters.TOKENS, counters.epoch_day(datetime.now(UTC)))) == 1
        )

    await eventually(active_is_one)
    await send(ended["b"])
    await eventually(lambda: _sessions(table, org, 0))


async def _sessions(table, org: str, n: int) -> bool:
    return table.get((org, counters.SESSIONS, 0)) == n


async def test_late_events_land_in_the_day_and_window_of_their_ts(
    client, new_org: OrgFactory, send: Send, stack
):
    now = datetime.now(UTC)
    org, key = await new_org(signup_date=(now - timedelta(days=400)).date().replace(day=1))
    earlier_this_month = now.replace(day=1, hour=0, minute=0, second=1)
    last_month = earlier_this_month - timedelta(days=3)
    await send(
        make_event(org_id=org, ts=last_month.isoformat(), input_tokens=1000, output_tokens=0)
    )
    await send(
        make_event(org_id=org, ts=earlier_this_month.isoformat(), input_tokens=20, output_tokens=0)
    )
    await send(make_event(org_id=org, input_tokens=3, output_tokens=0))
    await eventually(lambda: _is(client, key, 23))
    await rows_reach(stack, org, 3)
    rows = await stack.store.query(
        "SELECT day, sum(billable) FROM usage_daily WHERE org_id = {o:String} GROUP BY day"
        " ORDER BY day",
        {"o": org},
    )
    days = {d: int(v) for d, v in rows}
    assert days[last_month.date()] == 1000
    assert days[earlier_this_month.date()] + days.get(now.date(), 0) == 23


async def test_rollups_missing_after_a_partial_insert_are_rebuilt_from_events(
    client, new_org: OrgFactory, send: Send, stack
):
    # A process killed between an insert into `events` and its materialized views leaves
    # events without rollup rows; the worker finds and rebuilds them when it loads state.
    org, key = await new_org()
    await send(
        *[
            make_event(org_id=org, run_id="run-r", input_tokens=100, output_tokens=5)
            for _ in range(4)
        ]
    )
    await eventually(lambda: _is(client, key, 420))
    await rows_reach(stack, org, 4)
    rows = await stack.store.query(
        "SELECT any(partition) FROM events WHERE org_id = {o:String}", {"o": org}
    )
    partition = rows[0][0]
    for table in ("usage_daily", "usage_runs"):
        await stack.store.command(
            f"ALTER TABLE {table} DELETE WHERE org_id = {{o:String}} SETTINGS mutations_sync = 2",
            {"o": org},
        )

    repaired = await stack.worker.sink.repair(partition)

    assert repaired, "the gap was not found"
    daily = await stack.store.query(
        "SELECT sum(billable), sum(events) FROM usage_daily WHERE org_id = {o:String}", {"o": org}
    )
    runs = await stack.store.query(
        "SELECT sum(billable), sum(events) FROM usage_runs WHERE org_id = {o:String}"
        " AND run_id = 'run-r'",
        {"o": org},
    )
    assert daily == [(420, 4)] and runs == [(420, 4)]
    for table in ("usage_daily_items", "usage_daily_agents"):  # rebuilt with usage_daily
        derived = await stack.store.query(
            f"SELECT sum(billable), sum(events) FROM {table} WHERE org_id = {{o:String}}",
            {"o": org},
        )
        assert derived == [(420, 4)], table
    assert await stack.worker.sink.repair(partition) == []  # nothing left to repair


async def test_raw_events_past_the_plan_retention_go_and_the_rollups_stay(
    client, new_org: OrgFactory, send: Send, stack
):
    now = datetime.now(UTC)
    # Free keeps raw events 7 days; a billing window from 10 days back holds both events,
    # whatever the day of the month.
    org, key = await new_org(plan="free", signup_date=(now - timedelta(days=10)).date())
    old = make_event(
        org_id=org, ts=(now - timedelta(days=9)).isoformat(), input_tokens=40, output_tokens=0
    )
    recent = make_event(org_id=org, input_tokens=2, output_tokens=0)
    await send(old, recent)
    await eventually(lambda: _is(client, key, 42))  # both in the current billing window
    await rows_reach(stack, org, 2)

    from api.retention import RetentionSweeper

    assert await RetentionSweeper(stack.services, 3600).sweep() >= 1

    kept = await stack.store.query(
        "SELECT event_id FROM events WHERE org_id = {o:String}", {"o": org}
    )
    assert kept == [(recent["event_id"],)]
    daily = await stack.store.query(
        "SELECT sum(billable) FROM usage_daily WHERE org_id = {o:String}", {"o": org}
    )
    assert daily == [(42,)]
    # A reload of the partition's state does not mistake the deletion for a lost rollup.
    partition = (
        await stack.store.query(
            "SELECT any(partition) FROM usage_daily WHERE org_id = {o:String}", {"o": org}
        )
    )[0][0]
    assert await stack.worker.sink.repair(partition) == []
    assert await used(client, key) == 42  # quotas and bills are built from what stays
