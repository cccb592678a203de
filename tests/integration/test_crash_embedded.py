"""Nothing lost, whatever dies, on the default configuration: the embedded broker.

The embedded broker keeps its log in memory, so a `tally up` killed with SIGKILL loses
everything it had acknowledged and not stored. These tests kill what a crash kills (the
whole `tally up` process, or the separate `tally broker`), restart it at once as a
supervisor would, and count every event sent through the emitter SDK (or accepted over
HTTP) against what is stored: the emitter keeps each event until a stored mark confirms it
(end-to-end acknowledgement) and sends again what a restarted broker lost.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from producers import Emitter
from tally.broker import free_port
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event
from tests.integration.test_crash import ORGS, expected_totals, stored_totals, workload

pytestmark = pytest.mark.slow


class Up:
    """`tally up` as a supervisor runs it: the same ports and data directory every time."""

    def __init__(self, tmp: Path, bootstrap: str | None = None) -> None:
        self.tmp, self.bootstrap = tmp, bootstrap
        self.port, self.broker_port = free_port(), free_port()
        self.log = tmp / "tally.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def broker(self) -> str:
        return self.bootstrap or f"127.0.0.1:{self.broker_port}"

    def start(self) -> None:
        env = {**os.environ, "TALLY_ADMIN_KEY": ADMIN_KEY, "TALLY_LOG_FORMAT": "text"}
        where = (
            ["--bootstrap-servers", self.bootstrap]
            if self.bootstrap
            else ["--broker-port", str(self.broker_port)]
        )
        args = ["up", "--data-dir", str(self.tmp / "data"), "--api-port", str(self.port), *where]
        with self.log.open("ab") as out:
            out.write(b"\n=== start\n")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "commands.cli", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    async def ready(self, client: httpx.AsyncClient, timeout: float = 90) -> None:
        async def answers() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answers, timeout=timeout, interval=0.2)


class Broker:
    """`tally broker` in a process of its own, on a fixed port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "commands.cli", "broker", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def create_orgs(client: httpx.AsyncClient) -> dict[str, str]:
    keys = {}
    for org in ORGS:
        r = await client.post(
            "/api/v2/admin/orgs",
            headers=bearer(ADMIN_KEY),
            json={"org_id": org, "plan": "free", "signup_date": "2026-01-01"},
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            f"/api/v2/admin/orgs/{org}/keys", headers=bearer(ADMIN_KEY), json={"mode": "live"}
        )
        keys[org] = r.json()["key"]
    return keys


async def emit_all(emitter: Emitter, events: list[dict], seconds: float) -> None:
    """Emit the events at a steady pace over `seconds`, as runtimes would."""
    chunk = max(1, int(len(events) / (seconds / 0.05)))
    for start in range(0, len(events), chunk):
        for e in events[start : start + chunk]:
            emitter.emit(e)
        await asyncio.sleep(0.05)


async def assert_exact(up: Up, client: httpx.AsyncClient, keys: dict, events: list[dict]) -> None:
    tokens, cost, rows = expected_totals(events)
    orgs = sorted({e["org_id"] for e in events})
    seen: dict[str, tuple[int, int]] = {}

    async def quotas_exact() -> bool:
        for org in orgs:
            r = await client.get("/api/v2/quota/tokens", headers=bearer(keys[org]))
            seen[org] = (r.json()["used"], tokens[org])
        return all(a == b for a, b in seen.values())

    try:
        await eventually(quotas_exact, timeout=60, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"(used, expected) tokens per org: {seen}; see {up.log}") from exc
    assert up.stop() == 0
    stored = await stored_totals(up.tmp)
    for org in orgs:
        exact = {"rows": rows[org], "tokens": tokens[org], "cost": cost[org]}
        assert stored[org] == {
            "rows": rows[org],
            "distinct": rows[org],
            "tokens": tokens[org],
            "cost": cost[org],
            "usage_daily": exact,
            "usage_runs": exact,
        }, org


async def test_tally_up_killed_three_times_loses_and_doubles_nothing(tmp_path: Path):
    rng = random.Random(18)
    events = workload(rng)
    up = Up(tmp_path)
    up.start()
    try:
        async with httpx.AsyncClient(base_url=up.base, timeout=10) as client:
            await up.ready(client)
            keys = await create_orgs(client)
            async with Emitter(up.broker, spool_dir=tmp_path / "spool") as emitter:
                sending = asyncio.create_task(emit_all(emitter, events, seconds=25))
                for _ in range(2):
                    await asyncio.sleep(rng.uniform(2.0, 6.0))
                    up.kill()
                    up.start()  # at once, as a supervisor would
                    await up.ready(client)
                await sending
                # The third once everything is sent: nothing more goes to the new broker
                # that would show the emitter it lost what it held.
                await asyncio.sleep(0.5)
                up.kill()
                up.start()
                await up.ready(client)
                assert await emitter.wait_stored(180), emitter.stats()
                stats = emitter.stats()
            assert stats.resent > 0, "no kill caught events in flight: the test proved nothing"
            await assert_exact(up, client, keys, events)
    finally:
        up.kill()


async def test_the_separate_broker_killed_and_restarted_empty_loses_nothing(tmp_path: Path):
    rng = random.Random(19)
    events = workload(rng)
    broker = Broker(tmp_path)
    broker.start()
    up = Up(tmp_path, bootstrap=broker.bootstrap)
    try:
        up.start()
        async with httpx.AsyncClient(base_url=up.base, timeout=10) as client:
            await up.ready(client)
            keys = await create_orgs(client)
            async with Emitter(broker.bootstrap, spool_dir=tmp_path / "spool") as emitter:
                sending = asyncio.create_task(emit_all(emitter, events, seconds=30))
                for _ in range(3):
                    await asyncio.sleep(rng.uniform(3.0, 6.0))
                    broker.kill()
                    broker.start()  # empty: a new log under the running worker
                await sending
                assert await emitter.wait_stored(180), emitter.stats()
                stats = emitter.stats()
            assert stats.resent > 0, "no kill caught events in flight: the test proved nothing"
            await assert_exact(up, client, keys, events)
    finally:
        up.kill()
        broker.kill()


async def test_a_batch_answered_2xx_over_http_survives_a_sigkill(tmp_path: Path):
    up = Up(tmp_path)
    up.start()
    try:
        async with httpx.AsyncClient(base_url=up.base, timeout=30) as client:
            await up.ready(client)
            keys = await create_orgs(client)
            org = ORGS[0]
            batch = [make_event(org_id=org, input_tokens=i, output_tokens=1) for i in range(500)]
            r = await client.post("/api/v2/events", json=batch, headers=bearer(keys[org]))
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == 500 and r.json()["stored"] is True
            up.kill()  # at once after the answer: nothing is left to deliver anywhere
            up.start()
            await up.ready(client)
            await assert_exact(up, client, keys, batch)
    finally:
        up.kill()
