"""Exactly-once across crashes: `tally up` killed with SIGKILL while 100,000 events flow.

The worker runs in its own process (a chDB directory belongs to one process) against a
broker that outlives it. Crashes land before the insert, between the insert and the counter
publication, after the publication (failpoints), and at random moments (SIGKILL from here).
Afterwards every quota read and every ClickHouse total must be exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.events import parse_event
from streams.decode import flatten
from tally.broker import EmbeddedBroker, free_port
from tally.catalogue import load_prices
from tally.config import EVENTS_TOPIC
from tally.domain.pricing import Pricer
from tally.domain.usage import measure
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event

pytestmark = pytest.mark.slow

TOTAL = 100_000
ORGS = [f"crash-{i}" for i in range(8)]


def workload(rng: random.Random) -> list[dict]:
    events = []
    for i in range(TOTAL):
        org = ORGS[i % len(ORGS)]
        roll = rng.random()
        common = {
            "org_id": org,
            "agent_id": f"agent-{rng.randrange(20)}",
            "run_id": f"run-{rng.randrange(2000)}",
            "key_mode": "test" if roll < 0.05 else "live",
        }
        if roll < 0.75:
            e = make_event(
                "llm.usage",
                model=rng.choice(["gpt-4o", "gpt-4o-mini", "holo-1"]),
                input_tokens=rng.randrange(1, 5000),
                output_tokens=rng.randrange(0, 800),
                **common,
            )
        elif roll < 0.95:
            e = make_event(
                "tool.call",
                connector=rng.choice(["github", "slack", "jira"]),
                success=rng.random() > 0.1,
                **common,
            )
        else:
            e = make_event("gateway.request", **common)
        events.append(e)
    return events


def expected_totals(events: list[dict]) -> tuple[Counter, Counter, Counter]:
    pricer = Pricer(load_prices())
    tokens: Counter = Counter()
    cost: Counter = Counter()
    rows: Counter = Counter()
    for raw in events:
        event = flatten(parse_event(orjson.dumps(raw)))
        usage = measure(event, pricer)
        rows[event["org_id"]] += 1
        cost[event["org_id"]] += usage.cost_micros
        if usage.line_item == "llm":
            tokens[event["org_id"]] += usage.billable
    return tokens, cost, rows


class Process:
    def __init__(self, data_dir: Path, bootstrap: str, port: int, log: Path) -> None:
        self.data_dir, self.bootstrap, self.port, self.log = data_dir, bootstrap, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, failpoints: str = "") -> None:
        env = {
            **os.environ,
            "TALLY_ADMIN_KEY": ADMIN_KEY,
            "TALLY_FAILPOINTS": failpoints,
            "TALLY_SESSION_TIMEOUT_MS": "6000",
            "TALLY_BATCH_MAX_RECORDS": "2000",
        }
        with self.log.open("ab") as out:
            out.write(f"\n=== start failpoints={failpoints!r}\n".encode())
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "commands.cli",
                    "up",
                    "--bootstrap-servers",
                    self.bootstrap,
                    "--data-dir",
                    str(self.data_dir),
                    "--api-port",
                    str(self.port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        proc = self.proc

        async def exited() -> int | None:
            return proc.poll()

        await eventually(exited, timeout=timeout, interval=0.2)
        return int(proc.returncode)


async def test_sigkill_at_every_stage_keeps_counts_exact(tmp_path: Path):
    rng = random.Random(7)
    events = workload(rng)
    duplicates = rng.sample(events, 3_000)
    tokens, cost, rows = expected_totals(events)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "tally.log"

    with EmbeddedBroker() as broker:
        tally = Process(tmp_path / "data", broker.bootstrap_servers, port, log)
        tally.start()
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:

                async def ready() -> bool:
                    try:
                        return (await client.get("/readyz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await eventually(ready, timeout=90, interval=0.2)
                keys = {}
                for org in ORGS:
                    r = await client.post(
                        "/api/v2/admin/orgs",
                        headers=bearer(ADMIN_KEY),
                        json={"org_id": org, "signup_date": "2026-01-01"},
                    )
                    assert r.status_code == 201, r.text
                    r = await client.post(
                        f"/api/v2/admin/orgs/{org}/keys",
                        headers=bearer(ADMIN_KEY),
                        json={"mode": "live"},
                    )
                    keys[org] = r.json()["key"]

                producer = AIOKafkaProducer(
                    bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5
                )
                await producer.start()

                async def produce() -> None:
                    stream = events + duplicates
                    for start in range(0, len(stream), 1000):
                        for e in stream[start : start + 1000]:
                            await producer.send(
                                EVENTS_TOPIC, orjson.dumps(e), key=e["org_id"].encode()
                            )
                        await producer.flush()
                        await asyncio.sleep(0.2)

                producing = asyncio.create_task(produce())
                try:
                    tally.kill()
                    for point in (
                        "worker.before_insert",
                        "worker.after_insert",
                        "worker.after_publish",
                    ):
                        tally.start(f"{point}=crash@3")
                        code = await tally.wait_exit(timeout=120)
                        assert code == -signal.SIGKILL, f"{point}: exited with {code}, see {log}"
                    for _ in range(3):
                        tally.start()
                        await eventually(ready, timeout=90, interval=0.2)
                        await asyncio.sleep(rng.uniform(0.2, 3.0))
                        tally.kill()
                    await producing
                finally:
                    producing.cancel()
                    await producer.stop()

                tally.start()
                await eventually(ready, timeout=90, interval=0.2)

                seen: dict[str, tuple[int, int]] = {}

                async def exact() -> bool:
                    for org in ORGS:
                        r = await client.get("/api/v2/quota/tokens", headers=bearer(keys[org]))
                        seen[org] = (r.json()["used"], tokens[org])
                    return all(a == b for a, b in seen.values())

                try:
                    await eventually(exact, timeout=120, interval=0.5)
                except AssertionError as exc:
                    topic = await last_published(broker.bootstrap_servers)
                    tally.stop()
                    lines = log.read_text().splitlines()
                    notes = "\n".join(
                        x for x in lines if "WARN" in x or "stored" in x or "acquired" in x
                    )
                    stored = await stored_totals(tmp_path)
                    raise AssertionError(
                        f"(used, expected) per org: {seen}\nstored: {stored}\n"
                        f"last published: {topic}\nlog:\n{notes}"
                    ) from exc
            assert tally.stop() == 0
        finally:
            tally.kill()  # never leave a `tally up` behind, whatever failed

    stored = await stored_totals(tmp_path)
    for org in ORGS:
        exact = {"rows": rows[org], "tokens": tokens[org], "cost": cost[org]}
        assert stored[org] == {
            "rows": rows[org],
            "distinct": rows[org],
            "tokens": tokens[org],
            "cost": cost[org],
            "usage_daily": exact,
            "usage_runs": exact,  # every workload event belongs to a run
        }, org


async def last_published(bootstrap: str) -> dict:
    """Diagnostics: the last token value per org per day on usage.counters."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from tally.domain.counters import decode_key

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    tps = [TopicPartition("usage.counters", p) for p in range(8)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    last: dict = {}
    nxt = dict.fromkeys(range(8), 0)
    redelivered = 0
    for _ in range(30):
        batch = await consumer.getmany(timeout_ms=300, max_records=100_000)
        for tp, msgs in batch.items():
            for m in msgs:
                if m.offset < nxt[tp.partition]:
                    redelivered += 1
                    continue
                nxt[tp.partition] = m.offset + 1
                org, name, _ = decode_key(m.key)
                if name == "tokens":
                    last[org] = (orjson.loads(m.value)["v"], tp.partition, m.offset)
    await consumer.stop()
    last["redelivered"] = redelivered
    return last


async def stored_totals(tmp_path: Path) -> dict:
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STORED_TOTALS,
        str(tmp_path / "data" / "chdb"),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await reader.communicate()
    return json.loads(out)


STORED_TOTALS = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
out = {}
for org, n, d, t, cost in c.query(
    "SELECT org_id, count(), uniqExact(event_id), sumIf(billable, line_item = 'llm'),"
    " sum(cost_micros) FROM events GROUP BY org_id").result_rows:
    out[org] = {"rows": n, "distinct": d, "tokens": int(t), "cost": int(cost)}
for table in ("usage_daily", "usage_runs"):
    for org, n, t, cost in c.query(
        "SELECT org_id, sum(events), sumIf(billable, line_item = 'llm'), sum(cost_micros)"
        " FROM " + table + " GROUP BY org_id").result_rows:
        out[org][table] = {"rows": int(n), "tokens": int(t), "cost": int(cost)}
for p, n, lo, hi, epochs in c.query(
    "SELECT partition, count(), min(offset), max(offset), groupUniqArray(log_epoch)"
    " FROM events GROUP BY partition").result_rows:
    out[f"partition {p}"] = {"rows": n, "min": lo, "max": hi, "epochs": epochs}
print(json.dumps(out))
"""
