"""Graceful shutdown: SIGTERM drains the batch in flight and closes the store, in `tally up`
and in `tally worker`, while events keep flowing; after a restart every count is exact.

Also: the worker's own /metrics port, and JSON logs with partition and offset.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tally.broker import EmbeddedBroker, free_port
from tally.config import EVENTS_TOPIC
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event
from tests.integration.ops import samples, tally

pytestmark = pytest.mark.slow

ORGS = [f"term-{i}" for i in range(4)]


class Proc:
    """A `tally` process whose output goes to a log file."""

    def __init__(self, log: Path, *args: str) -> None:
        env = {
            **os.environ,
            "TALLY_ADMIN_KEY": ADMIN_KEY,
            "TALLY_SESSION_TIMEOUT_MS": "6000",
            "TALLY_BATCH_MAX_RECORDS": "500",
            "TALLY_LOG_FORMAT": "json",
        }
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "commands.cli", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return self.proc.poll() is not None

        await eventually(exited, timeout=timeout, interval=0.1)
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def json_lines(log: Path) -> list[dict]:
    return [orjson.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def test_sigterm_mid_stream_drains_and_a_restart_counts_exactly(tmp_path: Path):
    data = tmp_path / "data"
    api_port, metrics_port = free_port(), free_port()
    expected: Counter = Counter()
    events = []
    for i in range(24_000):
        e = make_event(org_id=ORGS[i % 4], input_tokens=i % 50 + 1, output_tokens=0)
        expected[e["org_id"]] += e["input_tokens"]
        events.append(e)
    stream = events + events[::40]  # and 600 producer retries, spread out

    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        up_args = ["up", "--bootstrap-servers", bootstrap, "--data-dir", str(data)]
        up_args += ["--api-port", str(api_port)]
        procs: list[Proc] = []
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as api:

            async def ready() -> bool:
                try:
                    return (await api.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            async def some_used() -> bool:
                r = await api.get("/api/v2/quota/tokens", headers=bearer(keys[ORGS[0]]))
                return bool(r.json()["used"])

            pace = [0.2]  # seconds between chunks: a steady stream until the last phase

            async def produce() -> None:
                for start in range(0, len(stream), 100):  # slow enough to outlast phases 1-2
                    for e in stream[start : start + 100]:
                        await producer.send(EVENTS_TOPIC, orjson.dumps(e), key=e["org_id"].encode())
                    await producer.flush()
                    await asyncio.sleep(pace[0])

            try:
                procs.append(Proc(tmp_path / "up-1.log", *up_args))
                await eventually(ready, timeout=90, interval=0.2)
                keys = {}
                for org in ORGS:
                    r = await api.post(
                        "/api/v2/admin/orgs",
                        headers=bearer(ADMIN_KEY),
                        json={"org_id": org, "signup_date": "2026-01-01"},
                    )
                    assert r.status_code == 201, r.text
                    r = await api.post(
                        f"/api/v2/admin/orgs/{org}/keys", headers=bearer(ADMIN_KEY), json={}
                    )
                    keys[org] = r.json()["key"]
                await producer.start()
                producing = asyncio.create_task(produce())

                # 1. `tally up` takes SIGTERM while events flow.
                await eventually(some_used, timeout=30)
                assert not producing.done()
                assert await procs[-1].terminate() == 0

                # 2. `tally worker` carries on against the same store, shows its metrics,
                # and takes SIGTERM mid-stream too.
                store = f"chdb://{(data / 'chdb').resolve()}"
                procs.append(
                    Proc(
                        tmp_path / "worker.log",
                        "worker",
                        "--bootstrap-servers",
                        bootstrap,
                        "--clickhouse-url",
                        store,
                        "--metrics-port",
                        str(metrics_port),
                    )
                )

                async def worker_counted() -> float:
                    try:
                        r = await api.get(f"http://127.0.0.1:{metrics_port}/metrics")
                    except httpx.HTTPError:
                        return 0
                    found = samples(r.text)
                    return sum(v for (n, _), v in found.items() if n == "tally_events_total")

                stored_by_worker = await eventually(worker_counted, timeout=60, interval=0.2)
                assert stored_by_worker > 0 and not producing.done()
                assert await procs[-1].terminate() == 0

                # 3. `tally up` again: once the stream has ended, every count is exact.
                pace[0] = 0
                procs.append(Proc(tmp_path / "up-2.log", *up_args))
                await producing
                await eventually(ready, timeout=90, interval=0.2)
                seen: dict[str, int] = {}

                async def exact() -> bool:
                    for org in ORGS:
                        r = await api.get("/api/v2/quota/tokens", headers=bearer(keys[org]))
                        seen[org] = r.json()["used"]
                    return seen == dict(expected)

                try:
                    await eventually(exact, timeout=60, interval=0.3)
                except AssertionError:
                    raise AssertionError(f"used {seen}, expected {dict(expected)}") from None
                run = await tally(
                    "reconcile",
                    "--settle",
                    "5",
                    "--json",
                    "--bootstrap-servers",
                    bootstrap,
                    "--api-url",
                    f"http://127.0.0.1:{api_port}",
                )
                report = orjson.loads(run.out)
                assert run.code == 0, report["differences"]
                assert report["broker"]["totals"]["events"] == len(events)
                assert report["stored_totals"]["events"] == len(events)
                assert report["stored_totals"]["rows"] == len(events)
                assert report["counter_totals"]["tokens"] == sum(expected.values())
                assert await procs[-1].terminate() == 0
            finally:
                for p in procs:
                    p.kill()
                await producer.stop()

    # Each stop was graceful and mid-stream: the next process took over from marks inside
    # the stream, each further on; and every line of every log is one JSON object.
    worker, up2 = marks(tmp_path / "worker.log"), marks(tmp_path / "up-2.log")
    assert len(worker) == len(up2) == 8
    assert 0 < sum(worker.values()) < sum(up2.values()) < len(stream)
    for name in ("up-1.log", "worker.log", "up-2.log"):
        lines = json_lines(tmp_path / name)
        assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
        assert lines[-1]["msg"].startswith("tally stopped: batches in flight drained")


def marks(log: Path) -> dict[int, int]:
    """The offset each partition was first acquired at, from the worker's JSON log lines."""
    out: dict[int, int] = {}
    for line in json_lines(log):
        if line["msg"].startswith("partition") and "acquired" in line["msg"]:
            out.setdefault(line["partition"], line["offset"])
    return out
