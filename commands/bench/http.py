"""Quota reads over HTTP with many concurrent clients, next to a bare ASGI app.

Both apps are served by the same server stack (uvicorn, in this process); the load comes
from `wrk` in its own process. The ratio of the two is the figure that travels between
machines. The two are measured in turns of ROUND_SECONDS, in the order Tally, bare, bare,
Tally, ..., so that a change in what else the machine is doing weighs on both alike (one
long run of each put a busy spell of the shared machine on one side only).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from datetime import UTC, date, datetime
from typing import Any

import httpx
import uvicorn

from api.accounts import account
from api.app import create_app
from commands.runtime import Tally
from tally.broker import free_port
from tally.domain import counters
from tally.domain.quota import day_buckets

PATH = "/api/v2/quota/tokens"
ROUND_SECONDS = 2


def bare_app(body: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@contextlib.asynccontextmanager
async def serving(app: Any) -> Any:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", lifespan="off", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():  # it could not start (its error is raised here)
            task.result()
            raise RuntimeError("the HTTP server stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    out = {"rps": rps}
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if m:
            out[f"p{p}_ms"] = round(float(m.group(1)) * _UNITS[m.group(2)], 3)
    return out


async def wrk(url: str, key: str, connections: int, seconds: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {key}",
        url + PATH,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return parse_wrk(out.decode())


async def quota_reads(tally: Tally, connections: int, seconds: int) -> dict[str, Any]:
    assert tally.services is not None
    svc = tally.services
    org = await svc.registry.create_org(f"http-bench-{int(time.time())}", "free", date(2026, 1, 1))
    key, _ = await svc.registry.create_key(org.org_id, "live")
    out: dict[str, Any] = {"lookup_us": lookup_us(tally, key)}
    if shutil.which("wrk") is None:
        out["skipped"] = "wrk is not installed (apt-get install wrk); HTTP figures not measured"
        return out
    app = create_app(svc)
    async with serving(app) as url:
        async with httpx.AsyncClient() as client:
            r = await client.get(url + PATH, headers={"Authorization": f"Bearer {key}"})
        r.raise_for_status()
        headers = [
            (k.encode(), v.encode()) for k, v in r.headers.items() if k not in ("date", "server")
        ]
        async with serving(bare_app(r.content, headers)) as bare_url:
            rounds = max(1, seconds // ROUND_SECONDS)
            each = max(1, seconds // rounds)
            runs: dict[str, list[dict[str, float]]] = {"tally": [], "bare": []}
            for i in range(rounds):
                order = (("tally", url), ("bare", bare_url))
                for side, at in order if i % 2 == 0 else order[::-1]:
                    runs[side].append(await wrk(at, key, connections, each))
    out["rounds"] = rounds
    out["tally"], out["bare"] = combine(runs["tally"]), combine(runs["bare"])
    out["ratio"] = round(out["tally"]["rps"] / out["bare"]["rps"], 3)
    return out


def combine(runs: list[dict[str, float]]) -> dict[str, float]:
    """Runs of equal length as one: the mean rate, and the worst of each percentile (wrk
    reports percentiles, not the latencies, so they cannot be merged exactly)."""
    out = {"rps": round(sum(r["rps"] for r in runs) / len(runs), 2)}
    for name in ("p50_ms", "p99_ms"):
        values = [r[name] for r in runs if name in r]
        if values:
            out[name] = max(values)
    return out


def lookup_us(tally: Tally, key: str, n: int = 100_000) -> float:
    """In-process cost of what a quota read does: authenticate, window, sum the days."""
    assert tally.services is not None
    svc = tally.services
    started = time.perf_counter()
    for _ in range(n):
        record = svc.registry.authenticate(key)
        assert record is not None
        window = account(svc.registry, svc.plans, record.org_id, datetime.now(UTC)).window
        svc.counters.total(record.org_id, counters.TOKENS, day_buckets(window))
    return round((time.perf_counter() - started) / n * 1e6, 2)
