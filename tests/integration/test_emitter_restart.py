"""The emitting process dies while the broker is away; the next one delivers its events.

The broker that is "away" here is an address where nothing listens: to the emitter that is
exactly a broker that is down (connections refused), and it lets the delivery go to the
session's broker, which is never stopped (test_emitter_outage.py restarts a broker).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from producers.spool import Spool
from tally.broker import free_port
from tests.conftest import OrgFactory, rows_reach
from tests.integration.test_emitter import tokens_reach

ROOT = Path(__file__).resolve().parents[2]


def runtime(bootstrap: str, spool: Path, org: str, n: int, first: int, mode: str) -> dict:
    args = [bootstrap, str(spool), org, str(n), str(first), mode]
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.emitting_process", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
async def test_spooled_events_outlive_the_process_and_are_counted_once(
    client, new_org: OrgFactory, stack, tmp_path
):
    org, key = await new_org()
    spool = tmp_path / "spool"
    down = f"127.0.0.1:{free_port()}"  # nothing listens here: the broker is down
    up = stack.settings.bootstrap_servers

    first = await asyncio.to_thread(runtime, down, spool, org, 400, 0, "close")
    assert (first["sent"], first["spooled"], first["failed"]) == (0, 400, 0)
    crashed = await asyncio.to_thread(runtime, down, spool, org, 300, 400, "crash")
    assert (crashed["sent"], crashed["spooled"]) == (0, 300)
    with Spool(spool) as left:  # both processes are gone; their events are on disk
        assert left.pending_bytes > 0

    last = await asyncio.to_thread(runtime, up, spool, org, 300, 700, "deliver")
    assert last["sent"] == 1_000 and last["spool_pending_bytes"] == 0

    await tokens_reach(client, key, sum(i + 2 for i in range(1_000)))
    await rows_reach(stack, org, 1_000)  # the quota may show them before they are stored
    rows = await stack.store.query(
        "SELECT count(), uniqExact(event_id), min(input_tokens), max(input_tokens)"
        " FROM events WHERE org_id = {o:String}",
        {"o": org},
    )
    assert rows[0] == (1_000, 1_000, 1, 1_000)
