"""A small deterministic workload for one org, and what it should add up to.

The expected figures come from the event definitions (`tally.domain.usage.measure` over the
price book, on events parsed by the pydantic contract), summed here in plain Python: an
independent account of what the rollups and the API must report.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.events import parse_event
from streams.decode import flatten
from tally.catalogue import load_prices
from tally.domain.pricing import Pricer
from tally.domain.usage import Usage, measure
from tests.factories import make_event, wire

AGENTS = ("support-bot", "research", "coder")
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "mystery-model")  # the last: unpriced
CONNECTORS = ("github", "slack", "web_search", "jira")  # jira: the default rate


@dataclass
class Workload:
    org_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    pricer: Pricer = field(default_factory=lambda: Pricer(load_prices(None)))

    def measured(self) -> list[tuple[dict[str, Any], Usage]]:
        """Each event with what it means for billing, through the contract's own parser."""
        return [(e, measure(flatten(parse_event(wire(e))), self.pricer)) for e in self.events]

    def expected(
        self, start: date, end: date, modes: tuple[str, ...] = ("live",)
    ) -> dict[str, int]:
        """The report figures of the events with ts in [start, end) and a key mode in modes."""
        out: dict[str, int] = defaultdict(int)
        for e, u in self.measured():
            day = _ts(e).date()
            if not start <= day < end or e["key_mode"] not in modes:
                continue
            _add(out, e, u)
        return dict(out)

    def expected_by(
        self, dimension: str, start: date, end: date, modes: tuple[str, ...] = ("live",)
    ) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for e, u in self.measured():
            day = _ts(e).date()
            if not start <= day < end or e["key_mode"] not in modes:
                continue
            value = {
                "day": day.isoformat(),
                "agent": e["agent_id"],
                "line_item": u.line_item,
                "item": u.item,
            }[dimension]
            _add(out[value], e, u)
        return {k: dict(v) for k, v in out.items()}

    def run_lines(self, run_id: str) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        """(agent, line_item, item, key_mode) -> events, quantity, billable, cost, first/last."""
        lines: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for e, u in self.measured():
            if e.get("run_id") != run_id:
                continue
            k = (e["agent_id"], u.line_item, u.item, e["key_mode"])
            line = lines.setdefault(
                k,
                {"events": 0, "quantity": 0, "billable": 0, "cost_micros": 0, "ts": []},
            )
            line["events"] += 1
            line["quantity"] += u.quantity
            line["billable"] += u.billable
            line["cost_micros"] += u.cost_micros
            line["ts"].append(_ts(e))
        return lines

    def runs_of(self, agent_id: str, start: date, end: date) -> dict[str, int]:
        """Live runs of an agent that started in [start, end): run_id -> cost."""
        first: dict[str, datetime] = {}
        cost: dict[str, int] = defaultdict(int)
        for e, u in self.measured():
            run = e.get("run_id")
            if not run or e["agent_id"] != agent_id or e["key_mode"] != "live":
                continue
            first[run] = min(first.get(run, _ts(e)), _ts(e))
            cost[run] += u.cost_micros
        return {r: cost[r] for r, t in first.items() if start <= t.date() < end}


def _ts(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).astimezone(UTC)


def _add(out: dict[str, int], e: dict[str, Any], u: Usage) -> None:
    out["events"] += 1
    out["cost_micros"] += u.cost_micros
    out["unpriced"] += 0 if u.priced else 1
    if u.line_item == "llm":
        out["tokens"] += u.quantity
        out["input_tokens"] += e["input_tokens"]
        out["output_tokens"] += e["output_tokens"]
        out["cached_input_tokens"] += e["cached_input_tokens"]
    elif u.line_item == "tool_calls":
        out["tool_calls"] += u.quantity
        out["billable_tool_calls"] += u.billable
    elif u.line_item == "requests":
        out["requests"] += u.quantity
    elif u.line_item == "storage":
        out["storage_byte_seconds"] += u.quantity


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(
    org_id: str, start: datetime, now: datetime, runs: int = 12, seed: int = 6
) -> Workload:
    """Runs of three agents spread over [start, now], with the awkward cases mixed in:
    test-key runs, failed tool calls, an unpriced model, usage with no run, and usage from
    before `start` (which a report of the current period must leave out)."""
    rng = random.Random(seed)
    w = Workload(org_id)
    span_s = max(1, int((now - start).total_seconds()) - 120)

    def event(type_: str, ts: datetime, **fields: Any) -> None:
        w.events.append(make_event(type_, org_id=org_id, ts=_iso(ts), **fields))

    for i in range(runs):
        agent = AGENTS[i % len(AGENTS)]
        mode = "test" if i % 5 == 4 else "live"
        run = f"run-{org_id}-{i:03d}"
        t = start + timedelta(seconds=rng.randrange(span_s))
        common = {"agent_id": agent, "run_id": run, "key_mode": mode, "session_id": run}
        event("session.started", t, **common)
        for _ in range(rng.randint(1, 4)):
            t += timedelta(seconds=rng.randint(1, 5))
            inp = rng.randint(50, 40_000)
            event(
                "llm.usage",
                t,
                model=rng.choice(MODELS),
                input_tokens=inp,
                cached_input_tokens=rng.randint(0, inp // 2),
                output_tokens=rng.randint(10, 4_000),
                mode=rng.choice(("managed", "managed", "byok")),
                **common,
            )
        for _ in range(rng.randint(0, 3)):
            t += timedelta(seconds=1)
            ok = rng.random() > 0.25
            event("tool.call", t, connector=rng.choice(CONNECTORS), success=ok, **common)
        if rng.random() < 0.6:
            t += timedelta(seconds=1)
            kind = rng.choice(("knowledge_base", "traces"))
            event("storage.usage", t, kind=kind, byte_seconds=rng.randint(10**6, 10**12), **common)
        for _ in range(rng.randint(0, 2)):
            t += timedelta(seconds=1)
            event("gateway.request", t, model="gpt-4o-mini", **common)
        event("session.ended", t + timedelta(seconds=1), **common)

    loose = {"agent_id": "research", "run_id": ..., "session_id": ...}
    event("llm.usage", start + timedelta(seconds=30), input_tokens=777, output_tokens=3, **loose)
    before = start - timedelta(days=2)
    event("llm.usage", before, agent_id="coder", run_id=f"run-{org_id}-old", input_tokens=5_000)
    event("tool.call", before, agent_id="coder", run_id=f"run-{org_id}-old", connector="slack")
    return w
