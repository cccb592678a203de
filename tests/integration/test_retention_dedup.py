"""Log retention never re-opens dedup: an event whose raw row retention deleted, sent again
through Kafka, `tally dlq replay` or `tally backfill`, is counted once.

Retention deletes raw events by their `ts`, so an event with an old `ts` can go the day it
is stored. Its id stays in `event_ids`, from which the worker rebuilds its dedup window on
start and the API answers backfills' and replays' "already stored" look-ups. Tally runs on
an embedded broker of the test's own and a fresh database of the session's chDB engine, and
is restarted in between, so that the dedup window is rebuilt from the store.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from api.app import create_app
from api.retention import RetentionSweeper
from commands.runtime import Tally
from tally.broker import EmbeddedBroker
from tally.config import EVENTS_TOPIC, Settings
from tally.store import Store
from tests.backends import drop_database, fresh_database
from tests.conftest import ADMIN_KEY, bearer, eventually, rows_reach, running, stored_rows
from tests.factories import make_event, wire
from tests.integration.ops import serve, tally

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def own(stack: Tally, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for a Tally on a broker of its own and a fresh database of the session's
    chDB engine; the test starts and stops it (`running`) as often as it needs."""
    assert stack.store is not None
    admin = Store(stack.store.url)
    await admin.start()
    url = await fresh_database(admin, "retention")
    try:
        async with EmbeddedBroker() as broker:
            yield stack.settings.model_copy(
                update={
                    "bootstrap_servers": broker.bootstrap_servers,
                    "clickhouse_url": url,
                    "data_dir": tmp_path,
                    "log_epoch": f"retention-{uuid.uuid4().hex[:8]}",
                }
            )
    finally:
        await drop_database(admin, url)
        await admin.stop()


async def _tokens_used(tally: Tally, key: str) -> int:
    assert tally.services is not None
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(tally.services)), base_url="http://t"
    ) as client:
        r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
        assert r.status_code == 200, r.text
        return int(r.json()["used"])


async def _until_used(tally: Tally, key: str, expected: int) -> None:
    async def check() -> int | None:
        n = await _tokens_used(tally, key)
        assert n <= expected, f"counted {n} tokens, more than the {expected} sent"
        return n if n == expected else None

    await eventually(check, timeout=30)


async def _new_org(tally: Tally, org: str, signup: date) -> str:
    """Register `org` on the free plan (7 days of raw events); returns a live key."""
    assert tally.services is not None
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(tally.services)), base_url="http://t"
    ) as client:
        headers = bearer(ADMIN_KEY)
        body = {"org_id": org, "plan": "free", "signup_date": signup.isoformat()}
        r = await client.post("/api/v2/admin/orgs", json=body, headers=headers)
        assert r.status_code == 201, r.text
        r = await client.post(
            f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=headers
        )
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


async def _send(settings: Settings, *events: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for e in events:
            await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _totals(tally: Tally, org: str) -> dict[str, Any]:
    """What the store holds for `org`: raw rows, ids, and the tokens of each rollup."""
    assert tally.store is not None
    p = {"o": org}
    out: dict[str, Any] = {
        "rows": await stored_rows(tally, org),
        "ids": (
            await tally.store.query(
                "SELECT uniqExact(event_id) FROM event_ids WHERE org_id = {o:String}", p
            )
        )[0][0],
    }
    for table in ("usage_daily", "usage_runs", "usage_daily_items", "usage_daily_agents"):
        rows = await tally.store.query(
            f"SELECT sum(events), sum(billable) FROM {table} WHERE org_id = {{o:String}}", p
        )
        out[table] = tuple(int(x) for x in rows[0])
    return out


async def test_an_event_deleted_by_retention_and_sent_again_is_counted_once(
    own: Settings, tmp_path: Path
):
    now = datetime.now(UTC)
    org = f"ret-{uuid.uuid4().hex[:8]}"
    old = make_event(
        org_id=org, ts=(now - timedelta(days=9)).isoformat(), input_tokens=40, output_tokens=0
    )
    recent = make_event(org_id=org, input_tokens=2, output_tokens=0)

    async with running(own) as first:
        assert first.services is not None
        key = await _new_org(first, org, signup=(now - timedelta(days=10)).date())
        # A billing window from 10 days back holds every event of the test.
        await _send(own, old, recent)
        await _until_used(first, key, 42)
        await rows_reach(first, org, 2)

        assert await RetentionSweeper(first.services, 3600).sweep() >= 1
        assert await stored_rows(first, org) == 1  # the old event's raw row is gone
        assert (await _totals(first, org))["ids"] == 2  # its id is kept

    # A restart rebuilds the dedup window from the store: the old event is in it, so the
    # same event sent again through Kafka is a duplicate.
    async with running(own) as second:
        after = make_event(org_id=org, input_tokens=1, output_tokens=0)
        await _send(own, old, after)
        await _until_used(second, key, 43)
        await rows_reach(second, org, 2)  # `recent` and `after`

        # Replayed and backfilled: the API knows it is stored, so it is not even sent.
        async with serve(second) as api_url:
            cli = ["--bootstrap-servers", own.bootstrap_servers, "--api-url", api_url]
            fix = tmp_path / "fix.jsonl"
            fix.write_bytes(wire(old) + b"\n")
            run = await tally("dlq", "replay", "--fix", str(fix), *cli)
            assert run.code == 0, run.out + run.err
            assert "replayed 0; skipped 1 already stored and 0 repeated" in run.out

            fresh = make_event(org_id=org, input_tokens=5, output_tokens=0)
            history = tmp_path / "history.jsonl"
            history.write_bytes(b"\n".join(wire(e) for e in (old, recent, after, fresh)))
            run = await tally("backfill", str(history), *cli)
            assert run.code == 0, run.out + run.err
            assert "sent 1 events; skipped 3 already stored and 0 repeated" in run.out
            await _until_used(second, key, 48)

            # Without the look-up the old event goes out again: the worker's dedup stops it.
            history.write_bytes(wire(old) + b"\n")
            run = await tally("backfill", str(history), "--no-skip-stored", *cli)
            assert run.code == 0, run.out + run.err
            assert "sent 1 events;" in run.out
        last = make_event(org_id=org, input_tokens=1, output_tokens=0)  # after the re-send
        await _send(own, last)
        await _until_used(second, key, 49)
        await rows_reach(second, org, 4)  # `recent`, `after`, `fresh`, `last`
        totals = await _totals(second, org)

    five = (5, 49)  # five events, 49 tokens: the old one counted once
    assert totals == {
        "rows": 4,
        "ids": 5,
        "usage_daily": five,
        "usage_runs": five,
        "usage_daily_items": five,
        "usage_daily_agents": five,
    }
