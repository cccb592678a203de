"""The usage reports over a store pre-loaded with a month of events, through the API.

The preload (`commands.bench.preload`) is generated inside ClickHouse and goes through the
materialized views like the worker's inserts. The queries are the ones a dashboard sends:
breakdowns by day, agent and line item (some filtered), the daily series, an agent's runs
and one run's line items, for random orgs, each through the API with the org's key; then
pages of the call log over the same events.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from api.app import create_app
from commands.bench import preload
from commands.bench.stats import percentile
from commands.runtime import Tally
from tally.catalogue import load_prices

# (shape name, path, query parameters); {agent} and {run} are filled in per request.
SHAPES: list[tuple[str, str, dict[str, str]]] = [
    ("by_day", "/api/v2/usage/breakdown", {"group_by": "day"}),
    ("by_agent", "/api/v2/usage/breakdown", {"group_by": "agent"}),
    ("by_line_item", "/api/v2/usage/breakdown", {"group_by": "line_item"}),
    ("by_day_line_item", "/api/v2/usage/breakdown", {"group_by": "day,line_item"}),
    ("by_agent_line_item", "/api/v2/usage/breakdown", {"group_by": "agent,line_item"}),
    ("by_day_agent_line_item", "/api/v2/usage/breakdown", {"group_by": "day,agent,line_item"}),
    ("one_agent_by_day", "/api/v2/usage/breakdown", {"group_by": "day", "agent_id": "{agent}"}),
    ("llm_by_item", "/api/v2/usage/breakdown", {"group_by": "item", "line_item": "llm"}),
    ("daily", "/api/v2/usage/daily", {}),
    ("agent_runs", "/api/v2/usage/agents/{agent}/runs", {}),
    ("run_line_items", "/api/v2/runs/{run}/usage", {}),
]
# Merges the preload leaves behind are waited for, up to this long: they would compete with
# the queries for the cores, which a store at steady state does not do.
SETTLE_S = 120.0


async def breakdowns(
    tally: Tally, rows: int, orgs: int, agents: int, days: int, queries: int
) -> dict[str, Any]:
    assert tally.services is not None and tally.store is not None
    svc, store = tally.services, tally.store
    end = datetime.now(UTC)
    started = time.perf_counter()
    book = load_prices(tally.settings.prices_file)
    sessions = await preload.load(store, book, rows, end, orgs=orgs, agents=agents, days=days)
    out: dict[str, Any] = {
        "breakdown_rows": rows,
        "preload_s": round(time.perf_counter() - started, 1),
    }
    out["settle_s"] = await settle(tally, SETTLE_S)
    keys = {}
    for i in range(orgs):
        org = f"bq-org-{i}"
        if org not in svc.registry.orgs:
            await svc.registry.create_org(org, "free", date(2026, 1, 1))
        keys[org] = (await svc.registry.create_key(org, "live"))[0]
    rng = random.Random(3)
    first = (end - timedelta(days=days)).date().isoformat()
    last = (end + timedelta(days=1)).date().isoformat()
    latencies: dict[str, list[float]] = defaultdict(list)
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        plan = [SHAPES[i % len(SHAPES)] for i in range(queries)]
        rng.shuffle(plan)
        for n, (name, path, params) in enumerate(SHAPES + plan):
            # The last session may have been cut short; every other holds a first run.
            org, agent, run = preload.run_id(
                sessions, rng.randrange(max(sessions - 1, 1)), orgs=orgs, agents=agents
            )
            names = {"agent": agent, "run": run}
            query = {"from": first, "to": last} if "runs/" not in path else {}
            query.update({k: v.format(**names) for k, v in params.items()})
            t = time.perf_counter()
            r = await client.get(
                path.format(**names),
                params=query,
                headers={"Authorization": f"Bearer {keys[org]}"},
            )
            elapsed = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            if n >= len(SHAPES):  # the first round warms up and is not counted
                latencies[name].append(elapsed)
        pages = await call_log(client, keys, rng, sessions, orgs, agents, walks=40)
    every = [ms for values in latencies.values() for ms in values]
    out["breakdown_p50_ms"] = percentile(every, 50)
    out["breakdown_p95_ms"] = percentile(every, 95)
    for name, values in latencies.items():
        out[f"q_{name}_p50_ms"] = percentile(values, 50)
        out[f"q_{name}_p95_ms"] = percentile(values, 95)
    out["calllog_pages"] = len(pages)
    out["calllog_p50_ms"] = percentile(pages, 50)
    out["calllog_p95_ms"] = percentile(pages, 95)
    return out


# The call log as a dashboard walks it: the newest page, then a few more with the cursor;
# unfiltered, by type, failed tool calls only, one agent.
LOG_FILTERS: list[dict[str, str]] = [
    {},
    {"type": "tool.call"},
    {"type": "llm.usage"},
    {"status": "failed"},
    {"agent_id": "{agent}"},
]


async def call_log(
    client: httpx.AsyncClient,
    keys: dict[str, str],
    rng: random.Random,
    sessions: int,
    orgs: int,
    agents: int,
    walks: int,
    pages_per_walk: int = 5,
) -> list[float]:
    """Milliseconds per page of 100 over the preloaded events, the first walk of each
    filter not counted (warm-up)."""
    latencies: list[float] = []
    for n in range(walks + len(LOG_FILTERS)):
        org, agent, _ = preload.run_id(
            sessions, rng.randrange(max(sessions - 1, 1)), orgs=orgs, agents=agents
        )
        params = {k: v.format(agent=agent) for k, v in LOG_FILTERS[n % len(LOG_FILTERS)].items()}
        cursor = None
        for _ in range(pages_per_walk):
            query = {**params, "limit": "100", **({"cursor": cursor} if cursor else {})}
            t = time.perf_counter()
            r = await client.get(
                "/api/v2/logs/events",
                params=query,
                headers={"Authorization": f"Bearer {keys[org]}"},
            )
            elapsed = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            if n >= len(LOG_FILTERS):
                latencies.append(elapsed)
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
    return latencies


async def settle(tally: Tally, timeout: float) -> float:
    """Wait until no merge runs in the store (at most `timeout` s); returns the wait."""
    assert tally.store is not None
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        (row,) = await tally.store.query(
            "SELECT count() FROM system.merges WHERE database = currentDatabase()"
        )
        if not row[0]:
            break
        await asyncio.sleep(0.5)
    return round(time.perf_counter() - started, 1)
