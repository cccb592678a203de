"""Admission checks: a strict check (decided by the worker in log order, answered once its
decision is stored) beside a plain one (decided from memory), with many concurrent callers.

The checks go through the app in this process (httpx's ASGI transport), so the figures are
the API's and the worker's own, without a server stack in between; the strict path's cost
is the round trip through the broker, the worker's batch and the store.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any

import httpx

from api.app import create_app
from commands.runtime import Tally

STRICT = {"meter": "tokens", "reserve": 1, "ttl_s": 5}
PLAIN = {"meter": "tokens", "amount": 1}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def _load(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], callers: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    end = time.monotonic() + seconds

    async def caller() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        while time.monotonic() < end:
            started = time.perf_counter()
            r = await client.post("/api/v2/quota/check", json=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.monotonic() - started
    return {
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": _percentile(latencies, 0.5),
        "p99_ms": _percentile(latencies, 0.99),
        "codes": {str(k): v for k, v in sorted(codes.items())},
    }


async def checks(tally: Tally, callers: int, seconds: float) -> dict[str, Any]:
    """p50/p99 latency and throughput of strict and plain checks, `callers` at a time."""
    assert tally.services is not None
    svc = tally.services
    org = await svc.registry.create_org(
        f"check-bench-{time.time_ns()}", "developer", date(2026, 1, 1)
    )
    key, _ = await svc.registry.create_key(org.org_id, "live")
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        await _load(client, key, STRICT, 1, 1.0)  # warm up: the first decision's path
        strict = await _load(client, key, STRICT, callers, seconds)
        plain = await _load(client, key, PLAIN, callers, seconds)
    out: dict[str, Any] = {"check_callers": callers}
    for name, figures in (("strict", strict), ("plain", plain)):
        for k, v in figures.items():
            out[f"check_{name}_{k}"] = v
    return out
