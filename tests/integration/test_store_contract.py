"""The store contract: what Tally needs from ClickHouse, checked on every transport.

One suite, two backends: chDB (always; a fresh database in the session's engine, since one
process opens one chDB directory) and a ClickHouse server in Docker (marker `docker`; it
skips, saying Docker is missing, where no Docker engine answers). Each backend gets an empty
database, so every figure below is exact.
"""

from __future__ import annotations

import asyncio
import random
import string
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiokafka.partitioner import DefaultPartitioner

from api.retention import DELETE as RETENTION
from streams import columns
from streams.batch import BatchResult, PartitionState, Record, apply, process
from streams.rows import EVENT_COLUMNS
from streams.sink import ClickHouseSink
from tally.catalogue import load_prices
from tally.domain.eventtime import Backfill
from tally.domain.partitioning import partition_of
from tally.domain.pricing import Pricer
from tally.store import Store, backfills, migrations, ops
from tally.store import queries as q
from tests.backends import clickhouse_container, drop_database, fresh_database
from tests.factories import make_event, orgs_across, orgs_on, wire

pytestmark = pytest.mark.slow

PRICER = Pricer(load_prices())
N = 64  # the partition count of usage.events in the rebuild tests below


@dataclass
class Backend:
    name: str
    admin: Store  # a store on the engine or server, used to create and drop databases
    store: Store  # migrated, on a database of its own

    async def fresh_url(self) -> str:
        return await fresh_database(self.admin, "contract")


@pytest.fixture(scope="module", params=["chdb", pytest.param("server", marks=pytest.mark.docker)])
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(backend name, URL of its default database): the session's chDB engine, or a server."""
    if request.param == "chdb":
        yield "chdb", request.getfixturevalue("stack").store.url
    else:
        with clickhouse_container() as url:
            yield "server", url


@pytest_asyncio.fixture(scope="module")
async def backend(engine: tuple[str, str]) -> AsyncIterator[Backend]:
    name, admin_url = engine
    admin = Store(admin_url)
    await admin.start()
    url = await fresh_database(admin, "contract")
    store = Store(url)
    await store.start()
    try:
        yield Backend(name, admin, store)
    finally:
        await store.stop()
        await drop_database(admin, url)
        await admin.stop()


@pytest_asyncio.fixture
async def empty(backend: Backend) -> AsyncIterator[Store]:
    """A migrated store with a database of its own: a partition's state is rebuilt from every
    org that maps to it, so a rebuild test keeps the other tests' orgs out."""
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc(value: datetime) -> datetime:
    """Transports may return naive UTC or aware datetimes; compare them as aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def varied_workload(org: str, now: datetime) -> list[dict[str, Any]]:
    """Every kind of event and every rule that touches a counter, for one org."""
    ago = lambda **delta: iso(now - timedelta(**delta))  # noqa: E731
    return [
        make_event(org_id=org, input_tokens=1200, output_tokens=300, ts=ago(minutes=5)),
        make_event(org_id=org, agent_id="agent-2", model="gpt-4o-mini", ts=ago(hours=2)),
        make_event(org_id=org, mode="byok", input_tokens=700, cached_input_tokens=200),
        make_event(org_id=org, model="no-such-model", input_tokens=10),  # unpriced
        make_event(org_id=org, key_mode="test", input_tokens=5000),  # recorded, free
        make_event(org_id=org, run_id="run-late", ts=ago(days=3)),  # late: an older day
        make_event("tool.call", org_id=org, connector="slack"),
        make_event("tool.call", org_id=org, success=False),  # failed: never billed
        make_event("tool.call", org_id=org, key_mode="test"),
        make_event("gateway.request", org_id=org, ts=ago(minutes=10)),
        make_event("gateway.request", org_id=org, ts=ago(minutes=10)),
        make_event("gateway.request", org_id=org, ts=ago(minutes=3), key_mode="test"),
        make_event("storage.usage", org_id=org, kind="traces", byte_seconds=10**12),
        make_event("session.started", org_id=org, session_id="open"),
        make_event("session.started", org_id=org, session_id="closed"),
        make_event("session.ended", org_id=org, session_id="closed"),
        make_event("session.ended", org_id=org, session_id="only-ended"),
        make_event("session.started", org_id=org, session_id="test-key", key_mode="test"),
    ]


def mark(result: BatchResult) -> tuple[str, int, int]:
    """What the worker stores with a batch: epoch, next offset, CRC of the last message."""
    return result.epoch, result.last_offset + 1, result.last_crc


async def run_batch(
    sink: ClickHouseSink,
    state: PartitionState,
    values: list[bytes],
    first_offset: int,
    history: Backfill | None = None,
) -> BatchResult:
    """What the worker does with one fetch: process, store with the mark, then apply.
    With `history`, the messages carry its range, as `tally backfill --from --to` sends
    them (events older than TALLY_MAX_EVENT_AGE_DAYS need it)."""
    headers = [history.header()] if history is not None else []
    records = [Record(first_offset + i, v, headers) for i, v in enumerate(values)]
    state.epoch = state.epoch or sink.base_epoch
    result = process(state, records, PRICER, datetime.now(UTC), state.epoch)
    await sink.write(result.rows, {state.partition: mark(result)})
    apply(state, result)
    return result


def event_row(**overrides: Any) -> list[Any]:
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "org_id": "org",
        "event_id": str(uuid.uuid4()),
        "type": "llm.usage",
        "ts": now,
        "agent_id": "agent-1",
        "run_id": "run-1",
        "session_id": "sess-1",
        "key_mode": "live",
        "line_item": "llm",
        "item": "gpt-4o",
        "quantity": 150,
        "billable": 150,
        "cost_micros": 1234,
        "priced": 1,
        "input_tokens": 100,
        "output_tokens": 50,
        "cached_input_tokens": 0,
        "mode": "managed",
        "provider": "openai",
        "tool": "",
        "success": 1,
        "cache_hit": 0,
        "partition": 0,
        "offset": 0,
        "ingested_at": now,
        "log_epoch": "contract",
    }
    row.update(overrides)
    return [row[c] for c in EVENT_COLUMNS]


async def table_schema(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Tables with their engines and keys, and every column with its type."""
    tables = await store.query(
        "SELECT name, engine, partition_key, sorting_key FROM system.tables"
        " WHERE database = currentDatabase() AND name != 'schema_migrations' ORDER BY name"
    )
    columns = await store.query(
        "SELECT table, name, type FROM system.columns WHERE database = currentDatabase()"
        " AND table != 'schema_migrations' ORDER BY table, position"
    )
    return {"tables": tables, "columns": columns}


# -- migrations --------------------------------------------------------------------------


async def test_migrations_run_twice_and_concurrently_leave_one_schema(backend: Backend):
    assert await backend.store.migrate() == []  # applied at start: nothing left to do
    reference = await table_schema(backend.store)
    names = {row[0] for row in reference["tables"]}
    assert {"events", "offsets", "usage_daily", "usage_runs", "orgs", "api_keys"} <= names
    assert {"usage_daily_mv", "usage_runs_mv"} <= names

    # Replicas starting together on an empty database all migrate at once.
    url = await backend.fresh_url()
    racers = [Store(url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.start() for s in racers))
        assert await racers[0].migrate() == []
        # Every statement of every migration, run a second time, changes nothing.
        for _, statements in migrations():
            for statement in statements:
                await racers[1].command(statement)
        assert await table_schema(racers[2]) == reference
    finally:
        for s in racers:
            await s.stop()
        await drop_database(backend.admin, url)


# -- inserts and bound parameters ----------------------------------------------------------


async def test_insert_and_query_with_bound_parameters(backend: Backend):
    store = backend.store
    org = f"o'rg\\\"ü-{uuid.uuid4().hex[:8]}"  # quotes, a backslash and non-ASCII
    day = datetime(2026, 3, 14, 15, 9, 26, 535_000, tzinfo=UTC)
    rows = [
        event_row(org_id=org, ts=day, partition=7, offset=1, billable=10),
        event_row(org_id=org, ts=day + timedelta(days=1), partition=8, offset=2, billable=20),
        event_row(org_id=org, ts=day, partition=9, offset=3, billable=40),
        event_row(org_id=org + "x", ts=day, partition=7, offset=4, billable=80),
    ]
    await store.insert("events", rows, EVENT_COLUMNS)

    found = await store.query(
        "SELECT event_id, ts, billable FROM events WHERE org_id = {o:String}"
        " AND toDate(ts) = {d:Date} AND partition IN ({p1:UInt16}, {p2:UInt32})"
        " AND billable >= {min:Int64} AND has({ids:Array(String)}, event_id) ORDER BY billable",
        {
            "o": org,
            "d": date(2026, 3, 14),
            "p1": 7,
            "p2": 9,
            "min": -1,
            "ids": [r[1] for r in rows],
        },
    )
    assert [(r[0], utc(r[1]), r[2]) for r in found] == [
        (rows[0][1], day, 10),
        (rows[2][1], day, 40),
    ]

    count = "SELECT count() FROM events WHERE org_id = {o:String}"
    assert await store.query(count, {"o": "x' OR 1=1; DROP TABLE events; --"}) == [(0,)]
    assert await store.query(count, {"o": org}) == [(3,)]


# -- rollups and deduplication -----------------------------------------------------------


async def test_materialized_views_agree_with_the_events(backend: Backend):
    orgs = [f"mv-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    sink = ClickHouseSink(backend.store, f"mv-{uuid.uuid4().hex}", 86_400)
    state = PartitionState(11)
    now = datetime.now(UTC)
    values = [wire(e) for org in orgs for e in varied_workload(org, now)]
    await run_batch(sink, state, values[:30], 0)
    await run_batch(sink, state, values[30:], 30)
    params = {"orgs": orgs}

    daily_keys = "org_id, toDate(ts), agent_id, line_item, item, key_mode, mode, partition"
    from_events = await backend.store.query(
        f"SELECT {daily_keys}, count(), sum(quantity), sum(billable), sum(cost_micros),"
        " sum(1 - priced), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens)"
        f" FROM events WHERE has({{orgs:Array(String)}}, org_id) GROUP BY {daily_keys}"
        f" ORDER BY {daily_keys}",
        params,
    )
    daily = "org_id, day, agent_id, line_item, item, key_mode, mode, partition"
    from_daily = await backend.store.query(
        f"SELECT {daily}, sum(events), sum(quantity), sum(billable), sum(cost_micros),"
        " sum(unpriced), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens)"
        f" FROM usage_daily WHERE has({{orgs:Array(String)}}, org_id) GROUP BY {daily}"
        f" ORDER BY {daily}",
        params,
    )
    assert len(from_events) > 10 and from_daily == from_events

    runs = "org_id, run_id, agent_id, line_item, item, key_mode"
    run_events = await backend.store.query(
        f"SELECT {runs}, min(ts), max(ts), count(), sum(quantity), sum(billable),"
        " sum(cost_micros), sum(1 - priced) FROM events"
        f" WHERE has({{orgs:Array(String)}}, org_id) AND run_id != '' GROUP BY {runs}"
        f" ORDER BY {runs}",
        params,
    )
    run_rollup = await backend.store.query(
        f"SELECT {runs}, min(first_ts), max(last_ts), sum(events), sum(quantity),"
        f" sum(billable), sum(cost_micros), sum(unpriced) FROM usage_runs"
        f" WHERE has({{orgs:Array(String)}}, org_id) GROUP BY {runs} ORDER BY {runs}",
        params,
    )
    assert len(run_events) > 10 and run_rollup == run_events

    for table, key in q.DERIVED_KEYS.items():
        derived = await derived_figures(backend.store, table, params)
        raw_key = key.replace("day", "toDate(ts) AS day")
        from_raw = await backend.store.query(
            f"SELECT {raw_key}, count(), sum(quantity), sum(billable), sum(cost_micros),"
            " sum(1 - priced), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens)"
            f" FROM events WHERE has({{orgs:Array(String)}}, org_id)"
            f" GROUP BY {key} ORDER BY {key}",
            params,
        )
        assert len(from_raw) > 10 and derived == from_raw, table


async def derived_figures(
    store: Store,
    table: str,
    params: dict[str, Any],
    where: str = "has({orgs:Array(String)}, org_id)",
) -> list[tuple[Any, ...]]:
    """A derived rollup's rows, summed by its key (for comparisons)."""
    key = q.DERIVED_KEYS[table]
    return await store.query(
        f"SELECT {key}, sum(events), sum(quantity), sum(billable), sum(cost_micros),"
        " sum(unpriced), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens)"
        f" FROM {table} WHERE {where} GROUP BY {key} ORDER BY {key}",
        params,
    )


async def stored(store: Store, org: str) -> tuple[int, ...]:
    """(events rows, distinct event ids, events in usage_daily, events in usage_runs,
    events in each derived rollup)."""
    p = {"o": org}
    rows, ids = (
        await store.query(
            "SELECT count(), uniqExact(event_id) FROM events WHERE org_id = {o:String}", p
        )
    )[0]
    daily = (await store.query("SELECT sum(events) FROM usage_daily WHERE org_id = {o:String}", p))[
        0
    ]
    runs = (await store.query("SELECT sum(events) FROM usage_runs WHERE org_id = {o:String}", p))[0]
    derived = [
        (await store.query(f"SELECT sum(events) FROM {t} WHERE org_id = {{o:String}}", p))[0][0]
        for t in q.DERIVED_KEYS
    ]
    return int(rows), int(ids), int(daily[0]), int(runs[0]), *(int(d) for d in derived)


async def test_a_retried_insert_is_stored_once_in_events_and_in_the_rollups(backend: Backend):
    org = f"retry-{uuid.uuid4().hex[:8]}"
    sink = ClickHouseSink(backend.store, f"retry-{uuid.uuid4().hex}", 86_400)
    state = PartitionState(12)
    values = [wire(e) for e in varied_workload(org, datetime.now(UTC))]
    result = process(
        state,
        [Record(i, v) for i, v in enumerate(values)],
        PRICER,
        datetime.now(UTC),
        sink.base_epoch,
    )
    marks = {state.partition: mark(result)}
    # The insert succeeded but its acknowledgement was lost: the sink sends it again, and
    # the same batch always carries the same deduplication token.
    await sink.write(result.rows, marks)
    await sink.write(result.rows, marks)
    n = len(values)
    assert await stored(backend.store, org) == (n, n, n, n, n, n)

    # The store deduplicates by token, not by content: a different batch with the same rows
    # (which Tally never sends) is stored again, in the events and in both rollups.
    control = f"retry-control-{uuid.uuid4().hex[:8]}"
    rows = [event_row(org_id=control, partition=13, offset=i) for i in range(4)]
    settings = {"deduplicate_blocks_in_dependent_materialized_views": 1}
    for token in ("t-1", "t-1", "t-2"):
        await backend.store.insert(
            "events",
            rows,
            EVENT_COLUMNS,
            settings={**settings, "insert_deduplication_token": f"{control}|{token}"},
        )
    assert await stored(backend.store, control) == (8, 4, 8, 8, 8, 8)


# -- the rollups derived from usage_daily -------------------------------------------------


async def usage_daily_summed(store: Store, table: str) -> list[tuple[Any, ...]]:
    """usage_daily summed over what `table` leaves out: what `table` must hold."""
    key = q.DERIVED_KEYS[table]
    return await store.query(
        f"SELECT {key}, sum(events), sum(quantity), sum(billable), sum(cost_micros),"
        " sum(unpriced), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens)"
        f" FROM usage_daily GROUP BY {key} ORDER BY {key}"
    )


async def derived_match(store: Store) -> bool:
    for table in q.DERIVED_KEYS:
        if await derived_figures(store, table, {}, "1") != await usage_daily_summed(store, table):
            return False
    return True


async def test_the_report_rollups_migration_backfills_an_existing_store_once(backend: Backend):
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        # A store as 006 left it: no derived rollups, and months of data, some of whose raw
        # events retention has deleted since (the rollups are then the only record).
        for table in q.DERIVED_KEYS:
            await store.command(f"DROP VIEW {table}_mv")
            await store.command(f"DROP TABLE {table}")
        await store.command(
            "ALTER TABLE schema_migrations DELETE WHERE name = '007_report_rollups.sql'"
            " SETTINGS mutations_sync = 2"
        )
        sink = ClickHouseSink(store, "backfill", 86_400)
        now = datetime.now(UTC)
        orgs = [f"bf-{i}" for i in range(3)]
        events = [
            e
            for org in orgs
            for ago in (0, 20, 45)  # this month and the two before
            for e in varied_workload(org, now - timedelta(days=ago))
        ]
        states = {p: PartitionState(p) for p in (3, 4)}
        history = Backfill(now.date() - timedelta(days=60), now.date() + timedelta(days=1))
        for i, p in enumerate(states):
            values = [wire(e) for e in events[i::2]]
            await run_batch(sink, states[p], values, 0, history)
        await store.command(
            "DELETE FROM events WHERE org_id = 'bf-0' AND ts < {t:DateTime64(3, 'UTC')}",
            {"t": now - timedelta(days=10)},
        )

        assert await store.migrate() == ["007_report_rollups.sql"]
        assert await derived_match(store)
        counts = {t: await store.query(f"SELECT count() FROM {t}") for t in q.DERIVED_KEYS}
        assert all(n[0][0] > 30 for n in counts.values()), counts
        snapshot = {t: await derived_figures(store, t, {}, "1") for t in q.DERIVED_KEYS}
        months = await store.query("SELECT uniqExact(toYYYYMM(day)) FROM usage_daily")
        assert months[0][0] >= 2

        # Run again, and three at once: the same rows, none counted twice.
        await backfills.report_rollups(store)
        racers = [Store(url) for _ in range(3)]
        try:
            await asyncio.gather(*(r.start() for r in racers))
            await asyncio.gather(*(backfills.report_rollups(r) for r in racers))
        finally:
            for r in racers:
                await r.stop()
        assert {t: await derived_figures(store, t, {}, "1") for t in q.DERIVED_KEYS} == snapshot
        leftovers = await store.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
            " AND name LIKE '%backfill%'"
        )
        assert leftovers == []

        # From now on the materialized views keep them in step, late events included.
        late = [make_event(org_id="bf-1", ts=iso(now - timedelta(days=44)), input_tokens=77)]
        await run_batch(sink, states[3], [wire(e) for e in late], 1_000, history)
        assert await derived_match(store)
        assert (
            await derived_figures(store, "usage_daily_items", {}, "1")
            != snapshot["usage_daily_items"]
        )
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


async def test_the_runs_by_day_migration_dates_an_existing_store_once(backend: Backend):
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        # A store as 014 left it: usage_runs without a day, runs that span several days.
        (old,) = [s for name, s in migrations() if name == "002_rollups.sql"]
        await store.command("DROP VIEW usage_runs_mv")
        await store.command("DROP TABLE usage_runs")
        for statement in old:
            if "usage_runs" in statement.split("(")[0]:
                await store.command(statement)
        await store.command(
            "ALTER TABLE schema_migrations DELETE WHERE name = '015_usage_runs_by_day.sql'"
            " SETTINGS mutations_sync = 2"
        )
        p = 2
        sink = ClickHouseSink(store, "by-day", 86_400)
        now = datetime.now(UTC)
        (org,) = orgs_on(p, N, prefix="by-day")
        history = [e for ago in (0, 1, 3) for e in varied_workload(org, now - timedelta(ago))]
        state = PartitionState(p, N)
        await run_batch(sink, state, [wire(e) for e in history], 0)
        by_run = (
            "SELECT run_id, sum(events), sum(billable), sum(cost_micros), min(first_ts),"
            " max(last_ts) FROM usage_runs GROUP BY run_id ORDER BY run_id"
        )
        before = await store.query(by_run)
        assert len(before) > 3

        assert await store.migrate() == ["015_usage_runs_by_day.sql"]
        assert await store.query(by_run) == before
        assert await store.query("SELECT count() FROM usage_runs WHERE day = toDate(0)") == [(0,)]
        # Again, and three at once: the same rows, none counted twice.
        racers = [Store(url) for _ in range(3)]
        try:
            await asyncio.gather(*(r.start() for r in racers))
            await asyncio.gather(*(backfills.runs_by_day(r) for r in racers))
        finally:
            for r in racers:
                await r.stop()
        assert await store.query(by_run) == before
        # The rollup check splits runs that spanned days by the raw events, and agrees.
        await sink.repair(p)
        assert await store.query(by_run) == before
        per_day = (
            "SELECT run_id, day, sum(events) FROM usage_runs GROUP BY run_id, day"
            " ORDER BY run_id, day"
        )
        raw = await store.query(
            "SELECT run_id, toDate(ts) AS day, count() FROM events WHERE run_id != ''"
            " GROUP BY run_id, day ORDER BY run_id, day"
        )
        assert await store.query(per_day) == raw
        assert await sink.repair(p) == []
        # New events land on their own day.
        late = [make_event(org_id=org, ts=iso(now - timedelta(days=2)), run_id="run-new")]
        await run_batch(sink, state, [wire(e) for e in late], len(history))
        assert await store.query(
            "SELECT day, sum(events) FROM usage_runs WHERE run_id = 'run-new' GROUP BY day"
        ) == [((now - timedelta(days=2)).date(), 1)]
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


async def test_the_worker_rebuilds_derived_rollups_that_disagree(backend: Backend):
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        sink = ClickHouseSink(store, "derived-repair", 86_400)
        now = datetime.now(UTC)
        events = [e for ago in (0, 3) for e in varied_workload("dr", now - timedelta(days=ago))]
        await run_batch(sink, PartitionState(5), [wire(e) for e in events], 0)
        assert await derived_match(store) and await sink.repair(5) == []
        today = now.date()
        # A batch half stored (usage_daily written, the derived rollups not), and one
        # stored twice in a derived rollup: both are found and rebuilt.
        await store.command(
            "ALTER TABLE usage_daily_items DELETE WHERE day = {d:Date} SETTINGS mutations_sync = 2",
            {"d": today},
        )
        await store.command(
            "INSERT INTO usage_daily_agents SELECT * FROM usage_daily_agents"
            " WHERE day = {d:Date} SETTINGS insert_deduplicate = 0",
            {"d": today - timedelta(days=3)},
        )
        assert not await derived_match(store)
        assert await sink.repair(4) == []  # another partition: nothing of its own to fix
        assert await sink.repair(5) == sorted({today, today - timedelta(days=3)})
        assert await derived_match(store)
        assert await sink.repair(5) == []
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


# -- event ids: what log retention does not delete ---------------------------------------


async def stored_ids(store: Store) -> tuple[set[str], int]:
    """The ids in event_ids, and how many rows they hold once copies are merged away."""
    ids = {str(r[0]) for r in await store.query("SELECT DISTINCT event_id FROM event_ids")}
    rows = await store.query("SELECT count() FROM event_ids FINAL")
    return ids, int(rows[0][0])


async def test_event_ids_outlive_retention_and_the_migration_copies_an_existing_store(
    backend: Backend,
):
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        # A store as 007 left it: no event_ids, and events of this month and earlier ones.
        await store.command("DROP VIEW event_ids_mv")
        await store.command("DROP TABLE event_ids")
        await store.command(
            "ALTER TABLE schema_migrations DELETE WHERE name = '008_event_ids.sql'"
            " SETTINGS mutations_sync = 2"
        )
        p = 6
        sink = ClickHouseSink(store, "ids", 86_400)
        now = datetime.now(UTC)
        (org,) = orgs_on(p, N, prefix="ids")
        history = [e for ago in (0, 10, 20) for e in varied_workload(org, now - timedelta(ago))]
        state = PartitionState(p, N)
        await run_batch(sink, state, [wire(e) for e in history], 0)

        assert await store.migrate() == ["008_event_ids.sql"]
        every = {e["event_id"] for e in history}
        assert await stored_ids(store) == (every, len(every))
        # Again, and three at once: a copy merges away, and reads count each id once.
        await backfills.event_ids(store)
        racers = [Store(url) for _ in range(3)]
        try:
            await asyncio.gather(*(r.start() for r in racers))
            await asyncio.gather(*(backfills.event_ids(r) for r in racers))
        finally:
            for r in racers:
                await r.stop()
        assert await stored_ids(store) == (every, len(every))

        # From now on the materialized view keeps it, once per event however often an
        # insert is retried.
        retried = [wire(make_event(org_id=org)) for _ in range(5)]
        result = process(
            state, [Record(1_000 + i, v) for i, v in enumerate(retried)], PRICER, now, "ids"
        )
        await sink.write(result.rows, {p: mark(result)})
        await sink.write(result.rows, {p: mark(result)})
        apply(state, result)
        every |= {str(r[EVENT_COLUMNS.index("event_id")]) for r in result.rows}
        assert len(every) == len(history) + 5
        assert (await stored_ids(store))[0] == every
        new_rows = await store.query(
            "SELECT count() FROM event_ids WHERE event_id IN {ids:Array(String)}",
            {"ids": [str(r[EVENT_COLUMNS.index("event_id")]) for r in result.rows]},
        )
        assert new_rows == [(5,)]

        # Retention deletes the raw events older than a week; their ids stay known to the
        # dedup window a worker rebuilds and to the "already stored" look-up.
        rollups = await store.query("SELECT sum(events), sum(billable) FROM usage_daily")
        await store.command(
            "DELETE FROM events WHERE org_id = {o:String} AND ts < {t:DateTime64(3, 'UTC')}",
            {"o": org, "t": now - timedelta(days=7)},
        )
        week = now - timedelta(days=7)
        deleted = [e for e in history if datetime.fromisoformat(e["ts"]) < week]
        assert 0 < len(deleted) < len(history)
        assert (await store.query("SELECT count() FROM events"))[0][0] == len(every) - len(deleted)
        loaded = await ClickHouseSink(store, "ids", 86_400).load(p, N)
        assert set(loaded.seen) == every
        found = await store.query(*ops.stored_event_ids(sorted(every), [org]))
        assert {str(r[0]) for r in found} == every
        found = await store.query(*ops.stored_event_ids([e["event_id"] for e in deleted]))
        assert len(found) == len(deleted)
        assert await store.query(*ops.stored_event_ids(["no-such-id"], [org])) == []

        # Sent again, the deleted events are duplicates: nothing stored, nothing counted.
        again = await run_batch(sink, loaded, [wire(e) for e in deleted], loaded.next_offset)
        assert (again.duplicates, len(again.rows)) == (len(deleted), 0)
        assert await store.query("SELECT sum(events), sum(billable) FROM usage_daily") == rollups
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


async def test_the_rollup_repair_never_rebuilds_away_what_retention_deleted(backend: Backend):
    """A crash leaves raw events without their rollup rows, on a partition where retention
    deleted other raw events: the repair rebuilds what it can rebuild exactly and leaves the
    org-days that lost raw events to retention as they are (their rollups are the
    only record of the deleted events)."""
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        p = 7
        sink = ClickHouseSink(store, "kept", 86_400)
        now = datetime.now(UTC)
        old = now - timedelta(days=10)
        a, b, c = orgs_on(p, N, count=3, prefix="kept")

        def llm(org: str, at: datetime, run: str, tokens: int) -> bytes:
            event = make_event(org_id=org, ts=iso(at), run_id=run, input_tokens=tokens)
            return wire(event | {"output_tokens": 0})

        state = PartitionState(p, N)
        first = [llm(a, old, "run-a", 100) for _ in range(3)]
        first += [llm(b, old, "run-b", 1) for _ in range(2)]
        first += [llm(c, old, "run-c", 10) for _ in range(3)]
        await run_batch(sink, state, first, 0)
        # A's and C's plans keep raw events a week; B's keeps them all.
        await store.command(RETENTION, {"orgs": [a, c], "cutoff": now - timedelta(days=7)})

        # A process killed in the middle of an insert: events stored, rollups not. B's on
        # the old day outnumber A's deleted ones; C's arrive late, on its expired day and
        # run, and on today.
        views = list((await view_ddl(store, "usage_daily_mv", "usage_runs_mv")).values())
        for name in ("usage_daily_mv", "usage_runs_mv"):
            await store.command(f"DROP VIEW {name}")
        second = [llm(b, old, "run-b", 1_000) for _ in range(6)]
        second += [llm(c, old, "run-c", 20) for _ in range(5)]
        second += [llm(c, now, "run-c", 20), llm(c, now, "run-c2", 7)]
        await run_batch(sink, state, second, len(first))
        for view in views:
            await store.command(view)

        assert await sink.repair(p) == sorted({old.date(), now.date()})

        daily = await store.query(
            "SELECT org_id, day, sum(events), sum(billable) FROM usage_daily"
            " GROUP BY org_id, day ORDER BY org_id, day"
        )
        assert sorted(daily) == sorted(
            [
                (a, old.date(), 3, 300),  # deleted, kept
                (b, old.date(), 8, 6_002),  # rebuilt
                (c, old.date(), 3, 30),  # lost raw events to retention: kept as it was
                (c, now.date(), 2, 27),  # rebuilt
            ]
        )
        runs = await store.query(
            "SELECT org_id, run_id, sum(events), sum(billable) FROM usage_runs"
            " GROUP BY org_id, run_id ORDER BY org_id, run_id"
        )
        assert sorted(runs) == sorted(
            [
                (a, "run-a", 3, 300),
                (b, "run-b", 8, 6_002),
                # its expired day lost raw events to retention: kept as it was; today rebuilt
                (c, "run-c", 4, 50),
                (c, "run-c2", 1, 7),
            ]
        )
        assert await derived_match(store)
        # The gap left in C's expired day is reported again, never rebuilt from what is left.
        assert await sink.repair(p) == []
        assert (
            await store.query(
                "SELECT org_id, day, sum(events), sum(billable) FROM usage_daily"
                " GROUP BY org_id, day ORDER BY org_id, day"
            )
            == daily
        )
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


async def view_ddl(store: Store, *names: str) -> dict[str, str]:
    """The CREATE statement of each materialized view as the migrations left it."""
    rows = await store.query(
        "SELECT name, create_table_query FROM system.tables"
        " WHERE database = currentDatabase() AND has({names:Array(String)}, name)",
        {"names": list(names)},
    )
    views = {name: ddl for name, ddl in rows}
    assert set(views) == set(names)
    return views


async def test_the_rollup_repair_rebuilds_runs_cut_off_while_the_daily_rollup_is_whole(
    backend: Backend,
):
    """A process killed between the views of one insert: the events and usage_daily are
    stored, usage_runs is not. The repair finds the days by usage_runs alone and rebuilds the
    runs of those org-days, on every day they span, without counting anything twice."""
    url = await backend.fresh_url()
    store = Store(url)
    await store.start()
    try:
        p = 3
        sink = ClickHouseSink(store, "runs-cut", 86_400)
        now = datetime.now(UTC)
        yesterday = now - timedelta(days=1)
        a, b = orgs_on(p, N, count=2, prefix="runs-cut")

        def llm(org: str, at: datetime, run: str, tokens: int) -> bytes:
            event = make_event(org_id=org, ts=iso(at), run_id=run, input_tokens=tokens)
            return wire(event | {"output_tokens": 0})

        state = PartitionState(p, N)
        first = [llm(a, yesterday, "run-a", 10) for _ in range(4)]
        first += [llm(b, now, "run-b", 1) for _ in range(2)]
        await run_batch(sink, state, first, 0)
        (view,) = (await view_ddl(store, "usage_runs_mv")).values()
        await store.command("DROP VIEW usage_runs_mv")
        second = [llm(a, now, "run-a", 100) for _ in range(3)]
        second += [llm(a, now, "run-a2", 5)]
        await run_batch(sink, state, second, len(first))
        await store.command(view)

        assert await sink.repair(p) == [now.date()]
        runs = await store.query(
            "SELECT org_id, run_id, sum(events), sum(billable), min(first_ts), max(last_ts)"
            " FROM usage_runs GROUP BY org_id, run_id"
        )
        ms = timedelta(milliseconds=1)
        got = {(o, r): (int(n), int(t), lo, hi) for o, r, n, t, lo, hi in runs}
        assert {k: v[:2] for k, v in got.items()} == {
            (a, "run-a"): (7, 340),
            (a, "run-a2"): (1, 5),
            (b, "run-b"): (2, 2),
        }
        lo, hi = got[(a, "run-a")][2:]
        assert abs(utc(lo) - yesterday) < ms and abs(utc(hi) - now) < ms  # spans both days
        daily = await store.query("SELECT sum(events), sum(billable) FROM usage_daily")
        assert [tuple(map(int, r)) for r in daily] == [(10, 347)]
        assert await sink.repair(p) == []
    finally:
        await store.stop()
        await drop_database(backend.admin, url)


# -- watermarks and the rebuilt state ------------------------------------------------------


async def test_watermark_queries_return_the_stored_marks(backend: Backend):
    store, base = backend.store, f"wm-{uuid.uuid4().hex}"
    p = 21
    sink = ClickHouseSink(store, base, 86_400)
    assert (await sink.load(p, N)).next_offset == 0
    assert [seen for _, _, seen in await store.query(*q.watermark(base, p))] == [0, 0]

    org = f"wm-{uuid.uuid4().hex[:8]}"
    state = PartitionState(p)
    await run_batch(sink, state, [wire(make_event(org_id=org)) for _ in range(10)], 0)
    assert (await sink.load(p, N)).next_offset == 10
    # A fetch of nothing but duplicates and dead letters stores no rows, yet moves the mark.
    await sink.write([], {p: (base, 15, 0)})
    assert (await sink.load(p, N)).next_offset == 15
    # Rows stored but the offsets row lost (a crash between the two inserts): the rows are
    # their own watermark.
    rows = [event_row(org_id=org, partition=p, offset=o, log_epoch=base) for o in range(15, 20)]
    await store.insert("events", rows, EVENT_COLUMNS)
    assert (await sink.load(p, N)).next_offset == 20
    marks = await store.query(*q.watermark(base, p))
    assert max(int(n) for n, _, seen in marks if seen) == 20
    # Marks are per partition and per epoch: neither leaks into another.
    assert (await sink.load(p + 1, N)).next_offset == 0
    other = ClickHouseSink(store, f"{base}-other", 86_400)
    await other.write([], {p: (f"{base}-other", 1_000, 0)})
    assert (await sink.load(p, N)).next_offset == 20

    # After a broker reset the worker writes under `base.<id>`; whoever loads the partition
    # next continues that epoch, and other partitions keep theirs.
    assert (await sink.load(p, N)).epoch == base
    reset = sink.new_epoch()
    await sink.write([], {p: (reset, 3, 0)})
    resumed = await ClickHouseSink(store, base, 86_400).load(p, N)
    assert (resumed.epoch, resumed.next_offset) == (reset, 3)
    assert (await sink.load(p + 1, N)).epoch == base
    assert (await store.query(*q.latest_epoch(f"{base}-oth", p))) == []


async def test_load_rebuilds_exactly_the_state_the_worker_computed(empty: Store):
    sink = ClickHouseSink(empty, f"load-{uuid.uuid4().hex}", 86_400)
    state = PartitionState(31, N)
    now = datetime.now(UTC)
    orgs = orgs_on(31, N, count=2, prefix="load")
    first = [e for org in orgs for e in varied_workload(org, now)]
    await run_batch(sink, state, [wire(e) for e in first[:20]], 0)
    # The second fetch repeats events of the first (producer retries) and carries a dead
    # letter; the session left open in the first fetch ends in this one for one org.
    repeats = [wire(e) for e in first[:5]] + [b"not json"]
    ended = make_event("session.ended", org_id=orgs[0], session_id="open")
    second = repeats + [wire(e) for e in first[20:]] + [wire(ended)]
    result = await run_batch(sink, state, second, 20)
    assert result.duplicates == 5 and len(result.dead) == 1

    loaded = await ClickHouseSink(empty, sink.base_epoch, 86_400).load(state.partition, N)
    assert loaded.next_offset == state.next_offset == 20 + len(second)
    # A counter that went back to zero (a session that ended) is kept by the worker and not
    # rebuilt; both mean zero.
    assert loaded.counters == {k: v for k, v in state.counters.items() if v}
    assert loaded.sessions == state.sessions
    assert set(loaded.seen) == set(state.seen)
    assert len(loaded.counters) > 20  # every kind of counter is in there


async def test_a_rebuild_follows_each_org_to_its_partition_under_a_new_count(empty: Store):
    """Events stored on 4 partitions, rebuilt for 6: each partition's state is exactly the
    state of the orgs that map to it now, with their whole history wherever it was stored
    (counters, open sessions, dedup window), and its offsets are its own log's."""
    n, m = 4, 6
    sink = ClickHouseSink(empty, f"raise-{uuid.uuid4().hex}", 86_400)
    now = datetime.now(UTC)
    before: dict[int, PartitionState] = {}
    sent: dict[str, list[dict[str, Any]]] = {}
    for p in range(n):
        state = before[p] = PartitionState(p, n)
        orgs = orgs_across(p, n, m, prefix="raise")
        events = [e for org in orgs for e in varied_workload(org, now)]
        for e in events:
            sent.setdefault(e["org_id"], []).append(e)
        await run_batch(sink, state, [wire(e) for e in events], 0)
        assert len(state.seen) == len(events)  # every event counted where it arrived
    moved = [org for org in sent if partition_of(org, n) != partition_of(org, m)]
    assert moved and len(moved) < len(sent)

    after = {part: await sink.load(part, m) for part in range(m)}

    every = {k: v for state in before.values() for k, v in state.counters.items() if v}
    sessions = {k: v for state in before.values() for k, v in state.sessions.items()}
    for part, state in after.items():
        mine = {org for org in sent if partition_of(org, m) == part}
        assert state.counters == {k: v for k, v in every.items() if k[0] in mine}, part
        assert state.sessions == {k: v for k, v in sessions.items() if k[0] in mine}, part
        assert set(state.seen) == {e["event_id"] for org in mine for e in sent[org]}, part
        assert state.next_offset == (len(before[part].seen) if part < n else 0), part
    assert sum(len(s.counters) for s in after.values()) == len(every)

    # On its new partition a moved org's retried event is a duplicate, and its new events
    # add to its whole history.
    org = moved[0]
    retry = sent[org][0]
    fresh = make_event(org_id=org, input_tokens=1_000, output_tokens=0)
    state = after[partition_of(org, m)]
    result = await run_batch(sink, state, [wire(retry), wire(fresh)], state.next_offset)
    assert (result.duplicates, len(result.rows), result.forwards) == (1, 1, [])
    tokens = next(k for k in result.deltas if k[1] == "tokens")
    assert state.counters[tokens] == every.get(tokens, 0) + 1_000


async def test_the_store_computes_the_kafka_partition_of_an_org(backend: Backend):
    """`kafkaMurmurHash(org_id) % n` is the partition aiokafka's default partitioner (Kafka's
    Java default for a keyed message: `murmur2(key) & 0x7fffffff % n`) picks for key
    `org_id`, for keys of every length and alphabet and many counts: the rebuild selects an
    org's rows by it, and the worker checks its events with `partition_of`, the same function."""
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "-_.:'\"\\ üé日本🙂"
    orgs = ["acme", "org-1", "ünïcode-org", "x" * 128] + [f"org-{i}" for i in range(200)]
    orgs += ["".join(rng.choice(alphabet) for _ in range(1 + i % 128)) for i in range(2_000)]
    partitioner = DefaultPartitioner()
    for n in (1, 2, 3, 4, 6, 7, 8, 12, 16, 24, 48, 100, 1024):
        rows = await backend.store.query(
            "SELECT arrayMap(o -> kafkaMurmurHash(o) % {n:UInt32}, {orgs:Array(String)})",
            {"orgs": orgs, "n": n},
        )
        parts = list(range(n))
        expected = [partitioner(o.encode(), parts, parts) for o in orgs]
        assert list(rows[0][0]) == expected, n
        assert [partition_of(o, n) for o in orgs] == expected, n


async def test_a_fetch_taken_a_column_at_a_time_is_stored_as_an_event_at_a_time(
    backend: Backend,
):
    """The worker's column path and the definition store the same rows and rollups: ids,
    times, prices, constants and dictionary-encoded columns as ClickHouse reads them."""
    now = datetime.now(UTC)
    orgs = [f"col-{uuid.uuid4().hex[:8]}-{i}" for i in range(40)]
    events = [e for org in orgs for e in varied_workload(org, now)]  # 720: past the threshold
    records = [Record(i, wire(e)) for i, e in enumerate(events)]
    tables = ("events", "usage_daily", "usage_runs", *q.DERIVED_KEYS)
    found = []
    for taken in (True, False):
        url = await backend.fresh_url()
        store = Store(url)
        await store.start()
        try:
            state = PartitionState(5, epoch="cols")
            sink = ClickHouseSink(store, "cols", 86_400)
            if taken:
                result = columns.take(state, records, PRICER, now, "cols")
                assert result is not None and result.block is not None and not result.rows
                await sink.write([], {5: mark(result)}, [result.block])
            else:
                result = process(state, records, PRICER, now, "cols")
                await sink.write(result.rows, {5: mark(result)})
            found.append(
                {
                    t: await store.query(
                        f"SELECT * FROM {t} {'' if t == 'events' else 'FINAL'} ORDER BY ALL"
                    )
                    for t in tables
                }
            )
        finally:
            await store.stop()
            await drop_database(backend.admin, url)
    taken, defined = found
    assert len(defined["events"]) == len(events)
    for table in tables:
        assert taken[table] == defined[table], table
