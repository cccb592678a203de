"""`tally up` as a person starts it: how soon it is ready, and how quiet it is when idle.

A fresh data directory, the embedded broker, the whole process (`python -m commands.cli
up`): the time from the command to the first 200 of /readyz (worker partitions owned, API
answering), then the CPU `tally up` and its broker use over a quiet stretch, as fractions
of one core.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from commands.bench.stats import cpu_seconds
from tally.broker import free_port

READY_LIMIT_S = 120.0


async def start_and_idle(idle_s: float = 10.0, settle_s: float = 3.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tally-bench-start-") as tmp:
        api, broker_port = free_port(), free_port()
        command = [
            sys.executable,
            "-m",
            "commands.cli",
            "up",
            "--data-dir",
            tmp,
            "--api-port",
            str(api),
            "--broker-port",
            str(broker_port),
        ]
        started = time.perf_counter()
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited on by polling
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            ready_s = await _ready(f"http://127.0.0.1:{api}/readyz", started, proc)
            await asyncio.sleep(settle_s)  # start-up work (GC, first refreshes) behind it
            broker_pid = int((Path(tmp) / "broker.pid").read_text().split()[0])
            tally_from, broker_from = cpu_seconds(proc.pid), cpu_seconds(broker_pid)
            at = time.perf_counter()
            await asyncio.sleep(idle_s)
            tally_to, broker_to = cpu_seconds(proc.pid), cpu_seconds(broker_pid)
            span = time.perf_counter() - at
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    figures: dict[str, Any] = {"start_ready_s": round(ready_s, 2)}
    if None not in (tally_from, tally_to, broker_from, broker_to):
        figures["idle_cpu_tally"] = round((tally_to - tally_from) / span, 3)  # type: ignore[operator]
        figures["idle_cpu_broker"] = round((broker_to - broker_from) / span, 3)  # type: ignore[operator]
    return figures


async def _ready(url: str, started: float, proc: subprocess.Popen[bytes]) -> float:
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.perf_counter() - started < READY_LIMIT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"tally up exited with {proc.returncode} before it was ready")
            try:
                if (await client.get(url)).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError(f"tally up was not ready within {READY_LIMIT_S:.0f}s")


if __name__ == "__main__":
    print(asyncio.run(start_and_idle()))
