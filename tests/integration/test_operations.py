"""Operating Tally against the real broker and chDB: metrics, status, DLQ replay, backfill,
reconciliation. The commands run as `tally ...` processes against the session stack."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest_asyncio

from streams.rows import EVENT_COLUMNS
from tally import failpoints
from tally.catalogue import load_prices
from tally.config import COUNTERS_TOPIC
from tally.domain import counters
from tally.domain.counters import encode_key
from tally.domain.pricing import Pricer
from tally.domain.usage import measure
from tests.conftest import OrgFactory, Send, bearer, eventually, rows_reach
from tests.factories import make_event
from tests.integration.ops import samples, serve, tally, value


@pytest_asyncio.fixture(scope="module")
async def api_url(stack) -> AsyncIterator[str]:
    async with serve(stack) as url:
        yield url


def cli_args(stack, api_url: str) -> list[str]:
    return ["--bootstrap-servers", stack.settings.bootstrap_servers, "--api-url", api_url]


async def used(client, key: str) -> int:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["used"]


async def scrape(client) -> dict:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def test_metrics_move_when_events_flow(client, new_org: OrgFactory, send: Send):
    org, key = await new_org()
    before = await scrape(client)
    await send(*[make_event(org_id=org, input_tokens=10, output_tokens=0) for _ in range(7)])
    await send(*[make_event("tool.call", org_id=org) for _ in range(3)])
    await send(f"garbage {uuid.uuid4()}".encode(), key=org.encode())
    await send(make_event(org_id=org) | {"type": "no.such.type"})
    await eventually(lambda: _used_is(client, key, 70))
    r = await client.post(
        "/api/v2/quota/check", json={"meter": "tokens", "amount": 1}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text

    async def moved() -> dict | None:
        now = await scrape(client)

        def delta(name: str, **labels: str) -> float:
            return value(now, name, **labels) - value(before, name, **labels)

        figures = {
            "llm": delta("tally_events_total", type="llm.usage"),
            "tool": delta("tally_events_total", type="tool.call"),
            "json": delta("tally_dead_letters_total", reason="invalid_json"),
            "type": delta("tally_dead_letters_total", reason="unknown_type"),
            "store": delta("tally_batch_seconds_count", phase="store"),
            "process": delta("tally_batch_seconds_count", phase="process"),
            "insert": delta("tally_store_insert_seconds_count", table="events"),
            "quota": delta(
                "tally_http_request_seconds_count",
                route="/api/v2/quota/tokens",
                method="GET",
                status="200",
            ),
            "check": delta("tally_quota_checks_total", meter="tokens", code="ok"),
        }
        wanted = {"llm": 7, "tool": 3, "json": 1, "type": 1, "check": 1}
        ok = all(figures[k] >= v for k, v in wanted.items()) and all(
            figures[k] >= 1 for k in ("store", "process", "insert", "quota")
        )
        return (figures, now) if ok else None

    figures, now = await eventually(moved, timeout=20)
    # Other tests' events may flow at the same time, but never fewer than ours.
    assert figures["llm"] >= 7 and figures["tool"] >= 3
    partitions = {
        dict(labels)["partition"] for name, labels in now if name == "tally_consumer_lag_events"
    }
    assert partitions == {str(p) for p in range(8)}
    assert 0 <= value(now, "tally_counter_staleness_seconds") < 10
    assert value(now, "tally_counter_table_ready") == 1
    assert value(now, "tally_counter_table_keys") > 0
    # Route templates, not raw paths: no series per org, key or run.
    routes = {dict(labels).get("route") for name, labels in now if name.startswith("tally_http")}
    assert not any(org in (r or "") for r in routes)


async def _used_is(client, key: str, expected: int) -> bool:
    return await used(client, key) == expected


async def test_status_reports_lag_while_a_backlog_drains_and_health_once_gone(
    stack, api_url: str, send: Send
):
    args = ["status", *cli_args(stack, api_url), "--max-lag", "100"]

    last: list = []

    async def healthy():
        run = await tally(*args)
        last[:] = [run]
        return run if run.code == 0 else None

    try:
        run = await eventually(healthy, timeout=30, interval=0.5)
    except AssertionError:
        raise AssertionError(f"never healthy: {last[0].out}{last[0].err}") from None
    assert "HEALTHY" in run.out and "UNHEALTHY" not in run.out
    for part in ("broker", "store", "worker", "staleness", "dead letters"):
        assert part in run.out

    org = f"backlog-{uuid.uuid4().hex[:8]}"  # not registered: the registry shares the store
    failpoints.enable("store.insert", "error")
    try:
        await send(*[make_event(org_id=org, input_tokens=1, output_tokens=0) for _ in range(300)])
        run = await tally(*args, "--json")
        report = orjson.loads(run.out)
        assert run.code == 1, run.out
        assert not report["healthy"] and report["lag"] >= 300
        assert any("events behind" in p for p in report["problems"])
    finally:
        failpoints.disable("store.insert")

    run = await eventually(healthy, timeout=30, interval=0.5)
    assert "HEALTHY" in run.out and "UNHEALTHY" not in run.out


async def test_a_fixed_dead_letter_replayed_twice_is_counted_once(
    stack, api_url: str, client, new_org: OrgFactory, send: Send, tmp_path: Path
):
    org, key = await new_org()
    bad = make_event(org_id=org, input_tokens="12", output_tokens=0)  # a string: refused
    await send(bad)

    async def listed():
        run = await tally("dlq", "list", "--json", *cli_args(stack, api_url)[:2])
        mine = [orjson.loads(x) for x in run.out.splitlines() if bad["event_id"] in x]
        return mine or None

    (letter,) = await eventually(listed, timeout=20, interval=0.5)
    assert letter["error"] == "input_tokens: must be a valid integer"

    fixed = dict(orjson.loads(letter["value"]), input_tokens=12)
    fix = tmp_path / "fix.jsonl"
    fix.write_bytes(orjson.dumps({**letter, "value": fixed}) + b"\n")
    run = await tally("dlq", "replay", "--fix", str(fix), *cli_args(stack, api_url))
    assert run.code == 0, run.err
    assert "replayed 1;" in run.out
    await eventually(lambda: _used_is(client, key, 12))
    await rows_reach(stack, org, 1)  # the quota may show it before it is stored

    # Replayed again, with a line still broken: the fixed one is known, the broken one refused.
    fix.write_bytes(orjson.dumps({**letter, "value": fixed}) + b"\n" + orjson.dumps(letter))
    again = await tally("dlq", "replay", "--fix", str(fix), *cli_args(stack, api_url))
    assert again.code == 1
    assert "replayed 0; skipped 1 already stored and 0 repeated; 1 still invalid" in again.out
    assert "still invalid: fix.jsonl:2 (dlq offset" in again.err
    # Without the store look-up the message goes out again: the worker's dedup stops it.
    fix.write_bytes(orjson.dumps({**letter, "value": fixed}) + b"\n")
    forced = await tally(
        "dlq", "replay", "--fix", str(fix), "--no-skip-stored", *cli_args(stack, api_url)
    )
    assert forced.code == 0 and "replayed 1;" in forced.out
    await send(make_event(org_id=org, input_tokens=1, output_tokens=0))  # after the replays
    await eventually(lambda: _used_is(client, key, 13))
    await rows_reach(stack, org, 2)  # the fixed event and the one after the replays
    rows = await stack.store.query(
        "SELECT count() FROM events WHERE event_id = {e:String}", {"e": bad["event_id"]}
    )
    assert rows[0][0] == 1


async def test_reconcile_finds_injected_differences_and_reports_clean_otherwise(
    stack, api_url: str, new_org: OrgFactory, client, send: Send, producer
):
    org, key = await new_org()
    events = [make_event(org_id=org, input_tokens=100, output_tokens=5) for _ in range(20)]
    await send(*events)
    await eventually(lambda: _used_is(client, key, 2100))
    clean = ["reconcile", "--org", org, "--settle", "5", *cli_args(stack, api_url)]
    args = ["reconcile", "--org", org, "--settle", "0", *cli_args(stack, api_url)]

    run = await tally(*clean)
    assert run.code == 0, run.out + run.err
    assert "CLEAN" in run.out

    # A counter that disagrees with the store (as a lost or doubled publication would).
    today = counters.epoch_day(datetime.now(UTC))
    at = int(datetime.now(UTC).timestamp() * 1000)
    await producer.send(
        COUNTERS_TOPIC,
        orjson.dumps({"v": 2000, "t": at}),
        key=encode_key((org, counters.TOKENS, today)),
    )
    await producer.flush()
    await eventually(lambda: _used_is(client, key, 2000))
    run = await tally(*args, "--json")
    assert run.code == 1 and run.out, run.err
    report = orjson.loads(run.out)
    assert report["differences"] == [
        {
            "org_id": org,
            "day": datetime.now(UTC).date().isoformat(),
            "check": "store/counters",
            "figure": "tokens",
            "expected": 2100,
            "found": 2000,
        }
    ]
    # The next event republishes the absolute value: the counter heals itself.
    await send(make_event(org_id=org, input_tokens=1, output_tokens=0))
    await eventually(lambda: _used_is(client, key, 2101))
    await rows_reach(stack, org, 21)  # stored before the store goes down

    # Events on the broker that the store does not have.
    failpoints.enable("store.insert", "error")
    try:
        await send(*[make_event(org_id=org, input_tokens=7, output_tokens=0) for _ in range(5)])
        run = await tally(*args, "--json")
    finally:
        failpoints.disable("store.insert")
    assert run.code == 1
    missing = {
        (d["check"], d["figure"]): (d["expected"], d["found"])
        for d in orjson.loads(run.out)["differences"]
    }
    assert missing[("broker/store", "events")] == (26, 21)
    assert missing[("broker/store", "tokens")] == (2101 + 35, 2101)

    # A stored row counted twice.
    await eventually(lambda: _used_is(client, key, 2136))
    await rows_reach(stack, org, 26)
    row = await stack.store.query(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE event_id = {{e:String}}",
        {"e": events[0]["event_id"]},
    )
    await stack.store.insert("events", [list(row[0])], EVENT_COLUMNS)
    run = await tally(*args, "--json")
    assert run.code == 1
    found = {(d["check"], d["figure"]) for d in orjson.loads(run.out)["differences"]}
    assert ("duplicates", "rows") in found and ("broker/store", "tokens") in found
    assert ("store/counters", "tokens") in found


def _backfill_file(path: Path, orgs: list[str], n: int) -> tuple[Counter, Counter, Counter]:
    """n valid events over the last 40 days, then repeats and bad lines; expected totals."""
    pricer = Pricer(load_prices())
    start = datetime.now(UTC) - timedelta(days=40)
    run = uuid.uuid4().hex[:8]
    tokens: Counter = Counter()
    rows: Counter = Counter()
    cost: Counter = Counter()
    lines = []
    for i in range(n):
        org = orgs[i % len(orgs)]
        ts = start + timedelta(seconds=i * 30)
        e = {
            "event_id": f"bf-{run}-{i}",
            "org_id": org,
            "agent_id": f"agent-{i % 7}",
            "run_id": f"run-{i // 50}",
            "key_mode": "live" if i % 10 else "test",
            "ts": ts.isoformat(),
        }
        if i % 4:
            e |= {"type": "llm.usage", "model": "gpt-4o", "input_tokens": i % 997}
            e |= {"output_tokens": i % 13, "cached_input_tokens": 0, "mode": "managed"}
        else:
            e |= {"type": "tool.call", "connector": "github", "tool": "t", "success": i % 8 > 0}
        lines.append(orjson.dumps(e))
        usage = measure(e | {"ts": ts}, pricer)
        rows[org] += 1
        cost[org] += usage.cost_micros
        if usage.line_item == "llm":
            tokens[org] += usage.billable
    repeats = lines[:: n // 500]
    bad = [b"{not json", b'{"type": "llm.usage"}', b"[]"] * 10
    path.write_bytes(b"\n".join(lines + repeats + bad + [b""]))
    return tokens, rows, cost


async def test_backfill_of_100k_events_is_exact_and_shows_progress(
    stack, api_url: str, tmp_path: Path
):
    orgs = [f"backfill-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    path = tmp_path / "history.jsonl"
    tokens, rows, cost = _backfill_file(path, orgs, 100_000)

    # History older than TALLY_MAX_EVENT_AGE_DAYS goes with its range of days.
    today = datetime.now(UTC).date()
    history = ["--from", (today - timedelta(days=40)).isoformat()]
    history += ["--to", (today + timedelta(days=1)).isoformat()]
    run = await tally("backfill", str(path), *history, *cli_args(stack, api_url), timeout=300)
    assert run.code == 1, run.err  # some lines were rejected: the run says so
    assert "sent 100000 events; skipped 0 already stored and 500 repeated in the file;" in run.out
    assert "rejected 30 lines; all stored" in run.out
    assert "rejected line 100501: event: is not valid JSON" in run.err
    progress = [x for x in run.err.splitlines() if x.startswith("backfill history.jsonl: [")]
    assert len(progress) >= 10 and "100,530/100,530 (100%)" in progress[-1]
    done = [int(x.split("] ")[1].split("/")[0].replace(",", "")) for x in progress]
    assert done == sorted(done) and done[0] < 20_000

    stored = {
        org: (int(n), int(d), int(t), int(c))
        for org, n, d, t, c in await stack.store.query(
            "SELECT org_id, count(), uniqExact(event_id), sumIf(billable, line_item = 'llm'),"
            " sum(cost_micros) FROM events WHERE org_id IN {o:Array(String)} GROUP BY org_id",
            {"o": orgs},
        )
    }
    assert stored == {o: (rows[o], rows[o], tokens[o], cost[o]) for o in orgs}

    table = stack.services.counters

    async def counted() -> bool:
        return all(
            sum(
                v
                for (org, name, _), v in list(table.values.items())
                if org == o and name == counters.TOKENS
            )
            == tokens[o]
            for o in orgs
        )

    await eventually(counted, timeout=20)

    # Again, with part of the history and one new event: only the new one goes out.
    lines = path.read_bytes().splitlines()[:20_000]
    extra = make_event(org_id=orgs[0], input_tokens=5, output_tokens=0)
    path.write_bytes(b"\n".join([*lines, orjson.dumps(extra)]))
    again = await tally("backfill", str(path), *history, *cli_args(stack, api_url), timeout=300)
    assert again.code == 0, again.err
    assert "sent 1 events; skipped 20000 already stored and 0 repeated" in again.out
    n = await stack.store.query(
        "SELECT count() FROM events WHERE org_id IN {o:Array(String)}", {"o": orgs}
    )
    assert n[0][0] == 100_001
