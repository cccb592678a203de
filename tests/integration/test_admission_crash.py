"""Strict admission and leases across a SIGKILL: `tally up` (worker and API in one process,
its own chDB) against a broker that outlives it, killed while checks are answered.

A strict check is answered only once its decision is stored, so what a killed worker admitted
is held by the worker rebuilt after it, and a decision it made without storing it was never
answered: across the kill the checks admit exactly the plan. Leases of sessions with no end
lapse on the rebuilt worker, each recorded once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tally.broker import EmbeddedBroker, free_port
from tally.config import EVENTS_TOPIC
from tests.conftest import ADMIN_KEY, bearer, eventually
from tests.factories import make_event, wire
from tests.integration.test_crash import Process

pytestmark = pytest.mark.slow


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _org(client: httpx.AsyncClient, org: str) -> str:
    body = {"org_id": org, "plan": "free", "signup_date": "2026-01-01"}
    r = await client.post("/api/v2/admin/orgs", headers=bearer(ADMIN_KEY), json=body)
    assert r.status_code == 201, r.text
    r = await client.post(
        f"/api/v2/admin/orgs/{org}/keys", headers=bearer(ADMIN_KEY), json={"mode": "live"}
    )
    return str(r.json()["key"])


async def test_checks_answered_across_a_sigkill_never_admit_more_than_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Reservations outlast the test: only the 3 slots of the free plan may ever be admitted.
    monkeypatch.setenv("TALLY_SESSION_RESERVATION_TTL_S", "600")
    port = free_port()
    log = tmp_path / "tally.log"
    with EmbeddedBroker() as broker:
        tally = Process(tmp_path / "data", broker.bootstrap_servers, port, log)
        tally.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await eventually(lambda: _ready(client), timeout=90, interval=0.2)
                key = await _org(client, "kill-admit")
                producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
                await producer.start()
                admitted: list[str] = []
                killed = asyncio.Event()

                async def one() -> None:
                    """A runtime: check, and start the session at once if admitted."""
                    try:
                        r = await client.post(
                            "/api/v2/quota/check", json={"meter": "sessions"}, headers=bearer(key)
                        )
                    except httpx.HTTPError:
                        return  # the process died under it: not answered
                    if r.status_code != 200:
                        assert r.status_code in (429, 503), r.text
                        return
                    rid = r.json()["reservation_id"]
                    admitted.append(rid)
                    start = make_event(
                        "session.started", org_id="kill-admit", session_id=rid, reservation_id=rid
                    )
                    await producer.send_and_wait(EVENTS_TOPIC, wire(start), key=b"kill-admit")

                async def load() -> None:
                    while not killed.is_set():
                        await asyncio.gather(*(one() for _ in range(8)))

                try:
                    loading = asyncio.create_task(load())
                    # Kill as soon as a check is admitted, while others are in flight.
                    await eventually(lambda: _true(bool(admitted)), timeout=60, interval=0.01)
                    tally.kill()
                    killed.set()
                    await loading
                    before = len(admitted)

                    tally.start()
                    await eventually(lambda: _ready(client), timeout=90, interval=0.2)
                    for _ in range(5):
                        await asyncio.gather(*(one() for _ in range(40)))
                finally:
                    await producer.stop()

                async def figures() -> tuple[int, int] | None:
                    body = (await client.get("/api/v2/quota", headers=bearer(key))).json()
                    active = body["meters"]["sessions"]["active"]
                    held = body["reserved"]["sessions"]
                    return (active, held) if active == len(admitted) else None

                active, held = await eventually(figures, timeout=30)
                # Never more than the plan: what was admitted (and started) and what is held
                # for decisions stored but never answered (the kill took their answer) make 3.
                assert len(set(admitted)) == len(admitted) <= 3, (before, admitted)
                assert active + held == 3, (active, held, before)
            assert tally.stop() == 0
        finally:
            tally.kill()


async def _true(value: bool) -> bool:
    return value


async def test_leases_lapse_once_across_a_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TALLY_SESSION_LEASE_S", "4")
    port = free_port()
    log = tmp_path / "tally.log"
    with EmbeddedBroker() as broker:
        tally = Process(tmp_path / "data", broker.bootstrap_servers, port, log)
        tally.start()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        await producer.start()
        beating = True

        async def send(*events: dict) -> None:
            for e in events:
                await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
            await producer.flush()

        async def heartbeats() -> None:
            while beating:
                await send(make_event("session.heartbeat", org_id=org, session_id="kept"))
                await asyncio.sleep(0.5)

        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await eventually(lambda: _ready(client), timeout=90, interval=0.2)
                org = "kill-lease"
                key = await _org(client, org)

                async def active(n: int) -> bool:
                    r = await client.get("/api/v2/sessions/quota", headers=bearer(key))
                    return r.status_code == 200 and r.json()["active"] == n

                await send(
                    *(
                        make_event("session.started", org_id=org, session_id=s)
                        for s in ("lost-1", "lost-2", "kept")
                    )
                )
                beat = asyncio.create_task(heartbeats())
                await eventually(lambda: active(3), timeout=30)
                # The runtime of the lost sessions is gone; the worker is killed before their
                # leases lapse, and a new one (a new group member: a rebalance) takes over.
                tally.kill()
                assert tally.proc is not None and tally.proc.returncode == -signal.SIGKILL
                tally.start()
                await eventually(lambda: _ready(client), timeout=90, interval=0.2)
                await eventually(lambda: active(1), timeout=60)
                await asyncio.sleep(5)  # a lapse written twice, or a kept session lost, shows
                beating = False
                await beat
                assert await active(1)
                r = await client.get("/api/v2/sessions", headers=bearer(key))
                assert [s["session_id"] for s in r.json()["sessions"]] == ["kept"]
                r = await client.get(
                    f"/api/v2/admin/orgs/{org}/sessions", headers=bearer(ADMIN_KEY)
                )
                assert [s["session_id"] for s in r.json()["sessions"]] == ["kept"]
            assert tally.stop() == 0
        finally:
            beating = False
            await producer.stop()
            tally.kill()
    # Each lapse is stored once (read in a process of its own: a chDB directory belongs to
    # one process, and this one may have the session's engine).
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        EXPIRED_ENDS,
        str(tmp_path / "data" / "chdb"),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await reader.communicate()
    assert json.loads(out) == [["lost-1", 1], ["lost-2", 1]]


EXPIRED_ENDS = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
print(json.dumps(c.query(
    "SELECT session_id, count() FROM events WHERE type = 'session.ended'"
    " AND item = 'expired' GROUP BY session_id ORDER BY session_id").result_rows))
"""
