"""The benchmark's preload: events shaped like the simulator's, priced like the worker's,
and rolled up by the same materialized views."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from commands.bench import preload
from commands.runtime import Tally
from producers.simulate import CONNECTORS, MODELS
from streams.rows import EVENT_COLUMNS
from tally.catalogue import load_prices
from tally.domain.pricing import Pricer
from tally.domain.usage import measure
from tally.store import Store
from tests.backends import drop_database, fresh_database

pytestmark = pytest.mark.slow

BOOK = load_prices()
END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SHAPE = {"orgs": 4, "agents": 12, "days": 7, "partitions": 8}
ROWS = 20_000


@pytest_asyncio.fixture(scope="module")
async def loaded(stack: Tally) -> AsyncIterator[tuple[Store, int]]:
    assert stack.store is not None
    url = await fresh_database(stack.store, "preload")
    store = Store(url)
    await store.start()
    try:
        sessions = await preload.load(store, BOOK, ROWS, END, **SHAPE)
        yield store, sessions
    finally:
        await store.stop()
        await drop_database(stack.store, url)


async def rows_of(store: Store) -> list[dict[str, Any]]:
    columns = ", ".join(EVENT_COLUMNS)
    return [
        dict(zip(EVENT_COLUMNS, r, strict=True))
        for r in await store.query(f"SELECT {columns} FROM events")
    ]


def utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


async def test_the_preload_has_the_size_and_shape_asked_for(loaded):
    store, sessions = loaded
    rows = await rows_of(store)
    assert len(rows) == ROWS
    assert len({r["event_id"] for r in rows}) == ROWS
    assert {r["org_id"] for r in rows} == {f"bq-org-{i}" for i in range(4)}
    assert {r["agent_id"] for r in rows} == {f"agent-{i}" for i in range(12)}
    for r in rows:  # agent i belongs to org i % orgs
        assert r["org_id"] == f"bq-org-{int(r['agent_id'].split('-')[1]) % 4}"
    times = [utc(r["ts"]) for r in rows]
    assert END - timedelta(days=7) <= min(times) and max(times) <= END
    assert len({t.date() for t in times}) == 8  # seven days back, both ends partly
    # The partition is the producers' one for the org key (kafkaMurmurHash, as they use).
    by_org = {(r["org_id"], r["partition"]) for r in rows}
    assert len(by_org) == 4
    # Sessions: a start, runs of the same agent and key, an end; the last one may be cut.
    sessions_seen = {r["session_id"] for r in rows}
    assert sessions - 1 <= len(sessions_seen) <= sessions
    starts = Counter(r["session_id"] for r in rows if r["type"] == "session.started")
    assert set(starts) == sessions_seen and set(starts.values()) == {1}
    for r in rows:
        if r["run_id"]:
            assert r["run_id"].startswith(r["session_id"] + ".r")
            assert r["session_id"].startswith(f"{r['org_id']}.{r['agent_id']}.s")


async def test_the_mix_is_the_simulators(loaded):
    store, _ = loaded
    rows = await rows_of(store)
    types = Counter(r["type"] for r in rows)
    steps = types["llm.usage"] + types["tool.call"] + types["gateway.request"]
    assert 0.50 < types["llm.usage"] / steps < 0.62
    assert 0.35 < types["tool.call"] / steps < 0.45
    assert 0.02 < types["gateway.request"] / steps < 0.06
    assert 0 < types["storage.usage"] < types["session.started"] / 5
    assert types["session.started"] >= types["session.ended"] >= types["session.started"] - 1
    sessions = {r["session_id"]: r["key_mode"] for r in rows}
    assert 0.06 < Counter(sessions.values())["test"] / len(sessions) < 0.14
    tools = [r for r in rows if r["type"] == "tool.call"]
    assert 0.04 < sum(1 for r in tools if not r["success"]) / len(tools) < 0.12
    assert {r["item"] for r in tools} == set(CONNECTORS)
    assert {(r["item"], r["tool"]) for r in tools} <= {
        (c, t) for c, names in CONNECTORS.items() for t in names
    }
    llm = [r for r in rows if r["type"] == "llm.usage"]
    models = Counter(r["item"] for r in llm)
    assert set(models) == {m for m, _ in MODELS}
    assert models["gpt-4o-mini"] > models["gpt-4o"] > models["claude-sonnet-4"] > models["holo-1"]
    assert 0.05 < sum(1 for r in llm if r["mode"] == "byok") / len(llm) < 0.15


async def test_every_event_is_priced_as_the_worker_prices_it(loaded):
    store, _ = loaded
    pricer = Pricer(BOOK)
    for r in await rows_of(store):
        kind, item = r["type"], r["item"]
        event = {
            "type": kind,
            "key_mode": r["key_mode"],
            "ts": utc(r["ts"]),
            "model": item,
            "connector": item,
            "kind": item,
            "input_tokens": r["input_tokens"],
            "output_tokens": r["output_tokens"],
            "cached_input_tokens": r["cached_input_tokens"],
            "mode": r["mode"],
            "success": bool(r["success"]),
            "byte_seconds": r["quantity"],
        }
        usage = measure(event, pricer)
        got = (r["line_item"], item, r["quantity"], r["billable"], r["cost_micros"], r["priced"])
        want = (usage.line_item, usage.item, usage.quantity, usage.billable, usage.cost_micros, 1)
        assert got == want, r
    (cost,) = (await store.query("SELECT sum(cost_micros) FROM events WHERE key_mode = 'live'"))[0]
    assert cost > 0


async def test_the_rollups_are_filled_by_the_materialized_views(loaded):
    store, _ = loaded
    sums = "sum(quantity), sum(billable), sum(cost_micros)"
    raw = await store.query(
        f"SELECT org_id, toDate(ts) AS d, line_item, count(), {sums} FROM events"
        " GROUP BY org_id, d, line_item ORDER BY org_id, d, line_item"
    )
    daily = await store.query(
        f"SELECT org_id, day, line_item, sum(events), {sums} FROM usage_daily"
        " GROUP BY org_id, day, line_item ORDER BY org_id, day, line_item"
    )
    assert raw == daily and len(raw) > 100
    raw_runs = await store.query(
        f"SELECT run_id, count(), {sums}, min(ts), max(ts) FROM events WHERE run_id != ''"
        " GROUP BY run_id ORDER BY run_id"
    )
    runs = await store.query(
        f"SELECT run_id, sum(events), {sums}, min(first_ts), max(last_ts) FROM usage_runs"
        " GROUP BY run_id ORDER BY run_id"
    )
    assert raw_runs == runs


async def test_run_id_names_a_stored_run_of_its_org_and_agent(loaded):
    store, sessions = loaded
    for s in (0, 1, sessions // 2, sessions - 2):
        org, agent, run = preload.run_id(sessions, s, orgs=4, agents=12)
        rows = await store.query(
            "SELECT DISTINCT org_id, agent_id FROM events WHERE run_id = {r:String}", {"r": run}
        )
        assert rows == [(org, agent)], (s, run)


def test_the_preload_binds_the_price_books_rates():
    sql, params = preload.preload(BOOK, 10, 3, END)
    rate = BOOK.models["gpt-4o"][-1]
    i = params["models"].index("gpt-4o")
    assert params["input_rates"][i] == rate.input_per_mtok
    assert params["output_rates"][i] == rate.output_per_mtok
    assert params["call_rates"][params["connectors"].index("jira")] == 1000  # the "*" rate
    assert "gpt-4o" not in sql and "bq-org-" in sql
    with pytest.raises(ValueError):
        preload.preload(BOOK, 10, 3, END, orgs=10, agents=5)
