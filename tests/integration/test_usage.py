"""Where the money went: breakdowns, the daily series and runs, on a generated workload."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from schemas.usage import Breakdown
from tally.domain.quota import billing_window
from tally.domain.reports import METRICS
from tests.conftest import OrgFactory, Send, bearer, eventually
from tests.factories import make_event
from tests.workload import AGENTS, Workload, generate


async def get(client: httpx.AsyncClient, key: str, path: str, **params: Any) -> dict[str, Any]:
    r = await client.get(path, params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def figures(d: dict[str, Any]) -> dict[str, int]:
    return {m: d[m] for m in METRICS}


def expected_figures(partial: dict[str, int]) -> dict[str, int]:
    return {m: partial.get(m, 0) for m in METRICS}


def column_sums(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {m: sum(r[m] for r in rows) for m in METRICS}


async def loaded(
    client: httpx.AsyncClient, new_org: OrgFactory, send: Send
) -> tuple[str, str, Workload, date, date]:
    """An org whose period started five days ago, with the workload stored and counted."""
    now = datetime.now(UTC)
    signup = (now - timedelta(days=5)).date()
    org, key = await new_org(signup_date=signup)
    window = billing_window(signup, now)
    w = generate(org, window.start, now)
    await send(*w.events)
    await send(*w.events[:7])  # producer retries: the same event_ids again
    start, end = window.start.date(), window.end.date()
    want = w.expected(start, end)

    async def stored() -> bool:
        body = await get(client, key, "/api/v2/usage/breakdown")
        return body["total"]["events"] == want["events"]

    await eventually(stored, timeout=20)
    return org, key, w, start, end


@pytest.fixture
async def workload(client, new_org: OrgFactory, send: Send):
    return await loaded(client, new_org, send)


async def test_every_grouping_adds_up_to_the_total_and_to_the_workload(client, workload):
    org, key, w, start, end = workload
    want = expected_figures(w.expected(start, end))
    totals = []
    for group_by in ("", "day", "agent", "line_item", "item", "day,agent,line_item", "mode"):
        body = await get(client, key, "/api/v2/usage/breakdown", group_by=group_by)
        assert body["from"] == start.isoformat() and body["to"] == end.isoformat()
        assert body["key_mode"] == "live"
        assert figures(body["total"]) == want, group_by
        if group_by:
            assert body["rows"], group_by
            assert column_sums(body["rows"]) == want, group_by
            assert all(set(r["group"]) == set(group_by.split(",")) for r in body["rows"])
        else:
            assert body["rows"] == []
        totals.append(body["total"])
    assert all(t == totals[0] for t in totals)
    assert want["cost_micros"] > 0 and want["unpriced"] > 0
    assert want["billable_tool_calls"] < want["tool_calls"]  # failed calls are not billed

    for dimension in ("agent", "line_item", "day", "item"):
        body = await get(client, key, "/api/v2/usage/breakdown", group_by=dimension)
        got = {r["group"][dimension]: figures(r) for r in body["rows"]}
        expected = {k: expected_figures(v) for k, v in w.expected_by(dimension, start, end).items()}
        assert got == expected, dimension


async def test_a_breakdown_is_one_read_of_the_store(client, workload, stack, monkeypatch):
    """Rows and total come from one snapshot: they add up even while events arrive."""
    _, key, w, start, end = workload
    reads: list[str] = []
    real = stack.store.query

    async def counted(sql: str, params: dict[str, Any] | None = None) -> Any:
        if "usage_" in sql:  # a report's read (the registry refresh reads the store too)
            reads.append(sql)
        return await real(sql, params)

    monkeypatch.setattr(stack.store, "query", counted)
    want = expected_figures(w.expected(start, end))
    for group_by in ("", "day", "agent,line_item", "day,agent,line_item,item,key_mode,mode"):
        reads.clear()
        body = await get(client, key, "/api/v2/usage/breakdown", group_by=group_by)
        assert len(reads) == 1, (group_by, reads)
        assert figures(body["total"]) == want, group_by


# The report figures, written out again over the raw events (not the builder's SQL).
RAW_FIGURES = (
    "count(), sumIf(quantity, line_item = 'llm'), sum(input_tokens), sum(output_tokens),"
    " sum(cached_input_tokens), sumIf(quantity, line_item = 'tool_calls'),"
    " sumIf(billable, line_item = 'tool_calls'), sumIf(quantity, line_item = 'requests'),"
    " sumIf(quantity, line_item = 'storage'), sum(cost_micros), sum(1 - priced)"
)
RAW_GROUPS = {
    "day": "toString(toDate(ts))",
    "agent": "agent_id",
    "line_item": "line_item",
    "item": "item",
    "key_mode": "key_mode",
    "mode": "mode",
}


async def raw_breakdown(
    stack, org: str, start: date, end: date, groups: list[str], filters: dict[str, str]
) -> dict[tuple[str, ...], dict[str, int]]:
    where = [
        "org_id = {org:String}",
        "toDate(ts) >= {start:Date}",
        "toDate(ts) < {end:Date}",
        "key_mode IN {modes:Array(String)}",
    ]
    modes = {"all": ["live", "test"], "test": ["test"]}.get(filters.get("key_mode", ""), ["live"])
    params: dict[str, Any] = {"org": org, "start": start, "end": end, "modes": modes}
    for name in ("agent_id", "line_item"):
        if name in filters:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = filters[name]
    keys = [f"{RAW_GROUPS[g]} AS g{i}" for i, g in enumerate(groups)]
    sql = f"SELECT {', '.join([*keys, RAW_FIGURES])} FROM events WHERE {' AND '.join(where)}"
    if groups:
        sql += f" GROUP BY {', '.join(f'g{i}' for i in range(len(groups)))}"
    out = {}
    for row in await stack.store.query(sql, params):
        values = row[len(groups) :]
        if groups or values[0]:
            out[tuple(row[: len(groups)])] = dict(zip(METRICS, map(int, values), strict=True))
    return out


async def test_every_breakdown_equals_sums_over_the_raw_events(client, workload, stack):
    """Whichever rollup the builder reads, late events and retried sends included."""
    org, key, _, start, end = workload
    wide = start - timedelta(days=3)  # the workload's late events are before the period
    groupings = [
        "day",
        "agent",
        "line_item",
        "item",
        "key_mode",
        "mode",
        "day,line_item",
        "agent,line_item",
        "day,agent,line_item",
        "agent,item",
        "day,agent,line_item,item,key_mode,mode",
    ]
    for group_by in groupings:
        groups = group_by.split(",")
        for filters in ({}, {"agent_id": AGENTS[1]}, {"line_item": "llm"}, {"key_mode": "all"}):
            params = {"from": wide.isoformat(), "to": end.isoformat(), **filters}
            body = await get(client, key, "/api/v2/usage/breakdown", group_by=group_by, **params)
            got = {tuple(r["group"][g] for g in groups): figures(r) for r in body["rows"]}
            want = await raw_breakdown(stack, org, wide, end, groups, filters)
            assert got == want, (group_by, filters)
            assert figures(body["total"]) == column_sums(body["rows"])
            # Exactly the response model's layout, though the route writes it out itself.
            model = Breakdown.model_validate({**body, "from_": body["from"]})
            assert model.model_dump(mode="json", by_alias=True) == body
    total = await raw_breakdown(stack, org, wide, end, [], {})
    assert total[()]["events"] > len(AGENTS) * 10


async def test_breakdown_tokens_match_the_quota_counters(client, workload):
    _, key, w, start, end = workload
    want = w.expected(start, end)["tokens"]

    async def quota_caught_up() -> dict[str, Any] | None:
        body = await get(client, key, "/api/v2/quota/tokens")
        return body if body["used"] == want else None

    quota = await eventually(quota_caught_up, timeout=15)
    breakdown = await get(
        client,
        key,
        "/api/v2/usage/breakdown",
        **{"from": quota["window_start"][:10], "to": quota["window_end"][:10]},
        group_by="line_item",
    )
    llm = next(r for r in breakdown["rows"] if r["group"]["line_item"] == "llm")
    assert llm["tokens"] == breakdown["total"]["tokens"] == quota["used"] == want


async def test_filters_ranges_and_key_modes(client, workload):
    _, key, w, start, end = workload
    by_agent = await get(client, key, "/api/v2/usage/breakdown", group_by="agent")
    for row in by_agent["rows"]:
        agent = row["group"]["agent"]
        only = await get(client, key, "/api/v2/usage/breakdown", agent_id=agent)
        assert figures(only["total"]) == figures(row)
    llm = await get(client, key, "/api/v2/usage/breakdown", line_item="llm", group_by="item")
    assert {r["group"]["item"] for r in llm["rows"]} <= {
        "gpt-4o",
        "gpt-4o-mini",
        "claude-sonnet-4",
        "mystery-model",
    }
    assert llm["total"]["tool_calls"] == 0 and llm["total"]["tokens"] > 0

    # A wider range takes in the usage from before the period.
    wide = {"from": (start - timedelta(days=3)).isoformat(), "to": end.isoformat()}
    body = await get(client, key, "/api/v2/usage/breakdown", **wide)
    assert figures(body["total"]) == expected_figures(w.expected(start - timedelta(days=3), end))
    assert body["total"]["events"] == w.expected(start, end)["events"] + 2

    # Test-key traffic is recorded, shown on request, and free.
    test = await get(client, key, "/api/v2/usage/breakdown", key_mode="test")
    both = await get(client, key, "/api/v2/usage/breakdown", key_mode="all")
    assert test["total"]["tokens"] > 0 and test["total"]["cost_micros"] == 0
    assert figures(test["total"]) == expected_figures(w.expected(start, end, ("test",)))
    live = await get(client, key, "/api/v2/usage/breakdown")
    for m in METRICS:
        assert both["total"][m] == live["total"][m] + test["total"][m], m


async def test_daily_series_has_every_day(client, workload):
    _, key, w, start, end = workload
    body = await get(client, key, "/api/v2/usage/daily")
    days = [p["day"] for p in body["days"]]
    assert days == [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]
    assert column_sums(body["days"]) == figures(body["total"])
    assert figures(body["total"]) == expected_figures(w.expected(start, end))
    expected = w.expected_by("day", start, end)
    for point in body["days"]:
        assert figures(point) == expected_figures(expected.get(point["day"], {}))
    assert any(p["events"] == 0 for p in body["days"])  # the future days are zeros

    short = await get(
        client, key, "/api/v2/usage/daily", **{"from": "2025-02-27", "to": "2025-03-02"}
    )
    assert [p["day"] for p in short["days"]] == ["2025-02-27", "2025-02-28", "2025-03-01"]


async def test_a_run_is_explained_line_by_line(client, workload):
    org, key, w, start, end = workload
    runs = sorted({e["run_id"] for e in w.events if e.get("run_id")})
    for run_id in runs[:6] + [f"run-{org}-old"]:
        body = await get(client, key, f"/api/v2/runs/{run_id}/usage")
        expected = w.run_lines(run_id)
        got = {
            (li["agent_id"], li["line_item"], li["item"], li["key_mode"]): li
            for li in body["line_items"]
        }
        assert set(got) == set(expected), run_id
        for k, want in expected.items():
            line = got[k]
            for m in ("events", "quantity", "billable", "cost_micros"):
                assert line[m] == want[m], (run_id, k, m)
            assert _at(line["first_ts"]) == min(want["ts"])
            assert _at(line["last_ts"]) == max(want["ts"])
        assert body["total"]["cost_micros"] == sum(li["cost_micros"] for li in expected.values())
        assert body["total"]["events"] == sum(li["events"] for li in expected.values())
        assert body["agent_ids"] == sorted({k[0] for k in expected})


async def test_an_agent_lists_its_runs_with_their_cost(client, workload):
    _, key, w, start, end = workload
    for agent in AGENTS:
        body = await get(client, key, f"/api/v2/usage/agents/{agent}/runs")
        got = {r["run_id"]: r["cost_micros"] for r in body["runs"]}
        assert got == w.runs_of(agent, start, end), agent
        starts = [r["first_ts"] for r in body["runs"]]
        assert starts == sorted(starts, reverse=True)
        assert body["has_more"] is False
    one = await get(client, key, f"/api/v2/usage/agents/{AGENTS[0]}/runs", limit=1)
    assert len(one["runs"]) == 1 and one["has_more"] is True


async def test_reports_refuse_bad_parameters(client, new_org: OrgFactory):
    _, key = await new_org()
    cases = [
        ({"group_by": "day,planet"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
        ({"from": "2026-03-05", "to": "2026-03-01"}, "to"),
        ({"from": "2026-03-05", "to": "2026-03-05"}, "to"),
        ({"from": "2026-13-01", "to": "2026-14-01"}, "from"),
        ({"from": "yesterday", "to": "2026-03-01"}, "from"),
        ({"from": "2026-02-30", "to": "2026-03-01"}, "from"),
        ({"from": "2026-03-01"}, "to"),
        ({"from": "2024-01-01", "to": "2025-01-02"}, "to"),
        ({"key_mode": "sandbox"}, "key_mode"),
        ({"line_item": "coffee"}, "line_item"),
        ({"agent_id": "x" * 129}, "agent_id"),
    ]
    for params, name in cases:
        r = await client.get("/api/v2/usage/breakdown", params=params, headers=bearer(key))
        assert r.status_code == 400, (params, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_parameter"
        assert error["message"].startswith(f"{name}:"), (params, error)
    ok = await client.get(
        "/api/v2/usage/breakdown",
        params={"from": "2024-01-01", "to": "2025-01-01"},
        headers=bearer(key),
    )
    assert ok.status_code == 200  # 366 days: the longest range allowed
    r = await client.get("/api/v2/usage/daily", params={"to": "2026-01-01"}, headers=bearer(key))
    assert r.status_code == 400
    r = await client.get("/api/v2/usage/breakdown")
    assert r.status_code == 401


async def test_an_org_reads_only_its_own_usage(client, new_org: OrgFactory, send: Send):
    org_a, key_a = await new_org()
    org_b, key_b = await new_org()
    run = f"run-{org_a}-private"
    event = make_event(org_id=org_a, run_id=run, agent_id="secret-agent", input_tokens=900)
    await send(event)

    async def stored() -> bool:
        r = await client.get(f"/api/v2/runs/{run}/usage", headers=bearer(key_a))
        return r.status_code == 200

    await eventually(stored)
    r = await client.get(f"/api/v2/runs/{run}/usage", headers=bearer(key_b))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    wide = {"from": "2020-01-01", "to": "2020-12-31"}
    for params in ({}, {"group_by": "agent"}, {"agent_id": "secret-agent"}):
        body = await get(client, key_b, "/api/v2/usage/breakdown", **params)
        assert body["total"]["events"] == 0 and body["rows"] == []
    body = await get(client, key_b, "/api/v2/usage/agents/secret-agent/runs")
    assert body["runs"] == []
    body = await get(client, key_b, "/api/v2/usage/breakdown", **wide)
    assert body["total"]["events"] == 0


def _at(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC)
