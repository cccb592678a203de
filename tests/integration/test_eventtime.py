"""The event-time policy against the real broker and chDB: an event more than
TALLY_MAX_EVENT_AGE_DAYS old or more than 5 minutes ahead is refused over HTTP (in the
answer) and on Kafka (to the DLQ), never counted; `tally backfill --from --to` stores
history once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest_asyncio

from tally.domain.eventtime import iso
from tests.conftest import OrgFactory, Send, eventually, rows_reach, stored_rows
from tests.factories import make_event
from tests.integration.ops import serve, tally
from tests.integration.test_emitter import tokens_reach
from tests.integration.test_ingest import post
from tests.integration.test_stream import dead_letters

TOO_OLD = (
    "is more than 35 days in the past (TALLY_MAX_EVENT_AGE_DAYS); send history with"
    " `tally backfill FILE --from DAY --to DAY`"
)
AHEAD = (
    "is more than 300 s in the future (TALLY_MAX_EVENT_SKEW_S); check the clock of the"
    " runtime that sent it"
)


def at(t: datetime) -> str:
    """`t` on the wire, to the millisecond."""
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown(event: dict) -> str:
    """The event's `ts` as a refusal names it."""
    return iso(datetime.fromisoformat(event["ts"]))


@pytest_asyncio.fixture(scope="module")
async def api_url(stack) -> AsyncIterator[str]:
    async with serve(stack) as url:
        yield url


async def days_stored(stack, org: str) -> dict[date, int]:
    """Billable quantity per day in the rollup of `org`."""
    rows = await stack.store.query(
        "SELECT day, sum(billable) FROM usage_daily WHERE org_id = {o:String} GROUP BY day",
        {"o": org},
    )
    return {d: int(v) for d, v in rows}


async def test_over_http_an_event_too_old_or_ahead_is_rejected_with_the_reason(
    client, new_org: OrgFactory, stack
):
    org, key = await new_org()
    now = datetime.now(UTC)
    old = make_event(org_id=org, ts=at(now - timedelta(days=36)), input_tokens=1000)
    ahead = make_event(org_id=org, ts=at(now + timedelta(minutes=10)), input_tokens=1000)
    late = make_event(org_id=org, ts=at(now - timedelta(days=34)), input_tokens=20)
    good = make_event(org_id=org, input_tokens=7, output_tokens=0)
    r = await post(client, key, [old, ahead, late, good])
    assert r.status_code == 207, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (2, 2, 0)
    assert body["results"][:2] == [
        {
            "index": 0,
            "status": "rejected",
            "event_id": old["event_id"],
            "error": f"ts: {shown(old)} {TOO_OLD}",
        },
        {
            "index": 1,
            "status": "rejected",
            "event_id": ahead["event_id"],
            "error": f"ts: {shown(ahead)} {AHEAD}",
        },
    ]
    assert [x["status"] for x in body["results"][2:]] == ["accepted", "accepted"]
    await tokens_reach(client, key, 7)  # the late one counts in its own (earlier) window
    await rows_reach(stack, org, 2)
    stored = await stack.store.query(
        "SELECT event_id FROM events WHERE org_id = {o:String} ORDER BY event_id", {"o": org}
    )
    assert stored == sorted([(late["event_id"],), (good["event_id"],)])


async def test_on_kafka_an_event_too_old_or_ahead_goes_to_the_dlq_and_is_not_counted(
    client, new_org: OrgFactory, send: Send, stack
):
    org, key = await new_org()
    now = datetime.now(UTC)
    old = make_event(org_id=org, ts=at(now - timedelta(days=40)), input_tokens=1000)
    ahead = make_event(org_id=org, ts=at(now + timedelta(days=1)), input_tokens=1000)
    marker = make_event(org_id=org, input_tokens=3, output_tokens=0)
    dead_before = stack.worker.dead_letters
    await send(old, ahead, marker)

    async def both() -> list[dict] | None:
        found = await dead_letters(stack.settings.bootstrap_servers, org)
        return found if len(found) == 2 else None

    found = await eventually(both, timeout=20)
    errors = {orjson.loads(d["value"])["event_id"]: d["error"] for d in found}
    assert errors == {
        old["event_id"]: f"ts: {shown(old)} {TOO_OLD}",
        ahead["event_id"]: f"ts: {shown(ahead)} {AHEAD}",
    }
    await tokens_reach(client, key, 3)
    await rows_reach(stack, org, 1)
    assert await days_stored(stack, org) == {datetime.fromisoformat(marker["ts"]).date(): 3}
    assert stack.worker.dead_letters - dead_before >= 2


async def test_backfill_of_history_needs_its_range_and_stores_each_event_once(
    client, new_org: OrgFactory, stack, api_url: str, tmp_path: Path
):
    org, key = await new_org()
    args = ["--bootstrap-servers", stack.settings.bootstrap_servers, "--api-url", api_url]
    now = datetime.now(UTC)
    old_ts, recent_ts = now - timedelta(days=50), now - timedelta(minutes=1)
    old = make_event(org_id=org, ts=at(old_ts), input_tokens=1234, output_tokens=0)
    recent = make_event(org_id=org, ts=at(recent_ts), input_tokens=5, output_tokens=0)
    path = tmp_path / "history.jsonl"
    path.write_bytes(orjson.dumps(old) + b"\n" + orjson.dumps(recent) + b"\n")
    first, end = old_ts.date(), recent_ts.date() + timedelta(days=1)

    # Without a range: refused before anything is sent, with the range that would do.
    run = await tally("backfill", str(path), *args)
    assert run.code == 2, (run.out, run.err)
    assert (
        f"1 events of history.jsonl are more than 35 days old (TALLY_MAX_EVENT_AGE_DAYS),"
        f" the first at line 1 (ts {shown(old)})"
    ) in run.err
    assert "Nothing was sent." in run.err
    assert f"tally backfill {path} --from {first} --to {end}" in run.err

    # With it: both stored and counted once, the old one in its own day.
    range_ = ["--from", first.isoformat(), "--to", end.isoformat()]
    run = await tally("backfill", str(path), *range_, *args)
    assert run.code == 0, run.err
    assert "sent 2 events; skipped 0 already stored and 0 repeated in the file;" in run.out
    assert "rejected 0 lines; all stored" in run.out
    await rows_reach(stack, org, 2)
    await tokens_reach(client, key, 5)
    days = await days_stored(stack, org)
    assert days[old_ts.date()] == 1234 and sum(days.values()) == 1239

    # Again: nothing goes out. A narrower range rejects the line it does not hold.
    run = await tally("backfill", str(path), *range_, *args)
    assert run.code == 0, run.err
    assert "sent 0 events; skipped 2 already stored and 0 repeated in the file;" in run.out
    later = (first + timedelta(days=1)).isoformat()
    run = await tally("backfill", str(path), "--from", later, "--to", end.isoformat(), *args)
    assert run.code == 1
    assert (
        f"rejected line 1: ts: {shown(old)} is outside the backfill range"
        f" (--from {later} --to {end})"
    ) in run.err
    assert "sent 0 events; skipped 1 already stored" in run.out

    # A bad range is a usage error.
    run = await tally("backfill", str(path), "--from", end.isoformat(), "--to", later, *args)
    assert run.code == 2 and "--to" in run.err and "must be after --from" in run.err
    run = await tally("backfill", str(path), "--from", later, *args)
    assert run.code == 2 and "--from and --to go together" in run.err

    assert await stored_rows(stack, org) == 2
    assert await dead_letters(stack.settings.bootstrap_servers, org) == []
