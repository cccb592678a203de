"""Breakdown queries over a store pre-loaded with months of events.

The preload is generated inside ClickHouse (`numbers()`), so that ten million rows take
seconds; the materialized views fill the rollups exactly as they do for the worker's
inserts. The queries go through the API, as a dashboard would send them.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from api.app import create_app
from tally.bench.stats import percentile
from tally.runtime import Tally

PRELOAD = """
INSERT INTO events (org_id, event_id, type, ts, agent_id, run_id, session_id, key_mode,
    line_item, item, quantity, billable, cost_micros, priced, input_tokens, output_tokens,
    cached_input_tokens, mode, tool, success, cache_hit, partition, offset, ingested_at,
    log_epoch)
SELECT
    concat('bq-org-', toString(number % {orgs:UInt32})) AS org_id,
    toString(generateUUIDv4(number)),
    if(number % 5 = 0, 'tool.call', 'llm.usage'),
    {end:DateTime64(3, 'UTC')}
        - toIntervalMillisecond((number * 7919) % ({days:UInt32} * 86400000)),
    concat('agent-', toString(number % {agents:UInt32})),
    concat('run-', toString(intDiv(number, 25))),
    '', 'live',
    if(number % 5 = 0, 'tool_calls', 'llm'),
    if(number % 5 = 0, 'github', 'gpt-4o-mini'),
    if(number % 5 = 0, 1, 100 + number % 900),
    if(number % 5 = 0, 1, 100 + number % 900),
    if(number % 5 = 0, 2000, (100 + number % 900) * 3),
    1, 0, 0, 0, 'managed', '', 1, 0, 0, number, now64(3), 'bench-preload'
FROM numbers({rows:UInt64})
"""


async def breakdowns(
    tally: Tally, rows: int, orgs: int, agents: int, days: int, queries: int
) -> dict[str, Any]:
    assert tally.services is not None and tally.store is not None
    svc = tally.services
    end = datetime.now(UTC)
    started = time.perf_counter()
    await tally.store.command(
        PRELOAD, {"orgs": orgs, "agents": agents, "days": days, "rows": rows, "end": end}
    )
    out: dict[str, Any] = {
        "breakdown_rows": rows,
        "preload_s": round(time.perf_counter() - started, 1),
    }
    keys = []
    for i in range(orgs):
        org = f"bq-org-{i}"
        if org not in svc.registry.orgs:
            await svc.registry.create_org(org, "free", date(2026, 1, 1))
        keys.append((await svc.registry.create_key(org, "live"))[0])
    rng = random.Random(3)
    groupings = ["day", "agent", "line_item", "day,line_item", "agent,line_item"]
    first = (end - timedelta(days=days)).date().isoformat()
    last = (end + timedelta(days=1)).date().isoformat()
    latencies = []
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(queries):
            key = rng.choice(keys)
            params = {"from": first, "to": last, "group_by": rng.choice(groupings)}
            t = time.perf_counter()
            r = await client.get(
                "/api/v2/usage/breakdown", params=params, headers={"Authorization": f"Bearer {key}"}
            )
            latencies.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
    out["breakdown_p50_ms"] = percentile(latencies, 50)
    out["breakdown_p95_ms"] = percentile(latencies, 95)
    return out
