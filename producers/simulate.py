"""Realistic agent traffic for demos, tests and benchmarks: `tally simulate`.

`traffic()` is a pure, seeded generator of emitter calls: agents open sessions, a session
holds runs, a run makes LLM calls and tool calls (some fail), some sessions use a test key,
a few calls go through the gateway, and now and then a run keeps some storage. It never
ends; take as many calls as you need. `Summary` adds up what a list of calls means (per
type, live tokens, billed tool calls...), so that a test or a benchmark can check Tally's
figures exactly. `run()` plays the traffic into an `Emitter` at a given rate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.emitter import Emitter

Call = tuple[str, dict[str, Any]]  # (emitter helper name, its keyword arguments)

MODELS = (("gpt-4o-mini", 5), ("gpt-4o", 3), ("claude-sonnet-4", 2), ("holo-1", 1))
CONNECTORS = {
    "github": ("create_issue", "list_pull_requests", "comment"),
    "slack": ("post_message", "search"),
    "web_search": ("search",),
    "jira": ("create_ticket", "transition"),
}
TEST_SESSION_SHARE = 0.1
TOOL_FAILURE_SHARE = 0.08
GATEWAY_SHARE = 0.04
STORAGE_SHARE = 0.05
BYOK_SHARE = 0.1
STORED_WAIT_S = 10.0

log = logging.getLogger("tally.simulate")


def org_ids(orgs: int, prefix: str = "sim-org") -> list[str]:
    """The simulated orgs: sim-org-0001, sim-org-0002, ... (valid admin-API org ids)."""
    return [f"{prefix}-{i:04d}" for i in range(1, orgs + 1)]


def traffic(orgs: int, agents: int, seed: int = 0, prefix: str = "sim-org") -> Iterator[Call]:
    """An endless, reproducible stream of emitter calls from `orgs` x `agents` agents.

    Agents take turns at random; each call is `(helper name, keyword arguments)` for an
    Emitter, with no `ts` or `event_id` (the emitter stamps them when the call is made).
    """
    rng = random.Random(seed)
    models = [m for m, _ in MODELS]
    weights = [w for _, w in MODELS]
    scripts = [
        _agent(rng, org, f"agent-{a:02d}", models, weights, seed)
        for org in org_ids(orgs, prefix)
        for a in range(1, agents + 1)
    ]
    while True:
        yield next(rng.choice(scripts))


def _agent(
    rng: random.Random, org: str, agent: str, models: list[str], weights: list[int], seed: int
) -> Iterator[Call]:
    """One agent's life: sessions one after another, each holding a few runs."""
    n = 0
    while True:
        n += 1
        session = f"{org}.{agent}.s{seed}-{n}"
        mode = "test" if rng.random() < TEST_SESSION_SHARE else "live"
        base = {"org_id": org, "agent_id": agent, "key_mode": mode}
        yield "session_started", {**base, "session_id": session}
        for r in range(rng.randint(1, 3)):
            run = f"{session}.r{r + 1}"
            ctx = {**base, "run_id": run, "session_id": session}
            for _ in range(rng.randint(1, 6)):
                yield _step(rng, ctx, models, weights)
            if rng.random() < STORAGE_SHARE:
                kind = rng.choice(("knowledge_base", "traces"))
                yield "storage_usage", {**ctx, "kind": kind, "byte_seconds": _bytes(rng)}
        yield "session_ended", {**base, "session_id": session}


def _step(rng: random.Random, ctx: dict[str, Any], models: list[str], weights: list[int]) -> Call:
    roll = rng.random()
    if roll < GATEWAY_SHARE:
        model = rng.choices(models, weights)[0]
        return "gateway_request", {**ctx, "model": model, "cache_hit": rng.random() < 0.3}
    if roll < 0.6:
        input_tokens = rng.randint(200, 8_000)
        return "llm_usage", {
            **ctx,
            "model": rng.choices(models, weights)[0],
            "input_tokens": input_tokens,
            "output_tokens": rng.randint(20, 1_200),
            "cached_input_tokens": rng.randint(0, input_tokens // 2),
            "mode": "byok" if rng.random() < BYOK_SHARE else "managed",
        }
    connector = rng.choice(list(CONNECTORS))
    return "tool_call", {
        **ctx,
        "connector": connector,
        "tool": rng.choice(CONNECTORS[connector]),
        "success": rng.random() >= TOOL_FAILURE_SHARE,
    }


def _bytes(rng: random.Random) -> int:
    return rng.randint(1, 500) * 1_000_000 * rng.randint(60, 3_600)


@dataclass
class Summary:
    """What a sequence of calls amounts to, in the numbers Tally reports."""

    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    test_events: int = 0
    live_tokens: int = 0
    live_tokens_by_org: Counter[str] = field(default_factory=Counter)
    billed_tool_calls: int = 0
    failed_tool_calls: int = 0
    live_gateway_requests: int = 0
    live_byte_seconds: int = 0

    def add(self, call: Call) -> None:
        name, kw = call
        self.events += 1
        self.by_type[name.replace("_", ".", 1)] += 1
        live = kw["key_mode"] == "live"
        if not live:
            self.test_events += 1
        if name == "llm_usage" and live:
            tokens = kw["input_tokens"] + kw["output_tokens"]
            self.live_tokens += tokens
            self.live_tokens_by_org[kw["org_id"]] += tokens
        elif name == "tool_call":
            if not kw["success"]:
                self.failed_tool_calls += 1
            elif live:
                self.billed_tool_calls += 1
        elif name == "gateway_request" and live:
            self.live_gateway_requests += 1
        elif name == "storage_usage" and live:
            self.live_byte_seconds += kw["byte_seconds"]

    def lines(self) -> list[str]:
        out = [f"events sent       {self.events}"]
        out += [f"  {t:<16}{n}" for t, n in sorted(self.by_type.items())]
        out += [
            f"test-key events   {self.test_events}",
            f"live tokens       {self.live_tokens}",
        ]
        if len(self.live_tokens_by_org) <= 10:
            out += [f"  {o:<16}{n}" for o, n in sorted(self.live_tokens_by_org.items())]
        out += [
            f"billed tool calls {self.billed_tool_calls} (failed: {self.failed_tool_calls})",
            f"gateway requests  {self.live_gateway_requests} (live)",
            f"storage           {self.live_byte_seconds} byte-seconds (live)",
        ]
        return out


def emit(emitter: Emitter, call: Call) -> str:
    """Make one call on an emitter (or a SyncEmitter); returns the event_id."""
    name, kw = call
    method: Callable[..., str] = getattr(emitter, name)
    return method(**kw)


async def run(
    bootstrap_servers: str,
    *,
    orgs: int,
    agents: int,
    rate: float,
    duration: float,
    seed: int = 0,
    prefix: str = "sim-org",
    spool_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Emit `rate` events per second for `duration` seconds; returns what was sent."""
    total = int(rate * duration)
    summary = Summary()
    calls = traffic(orgs, agents, seed, prefix)
    with tempfile.TemporaryDirectory(prefix="tally-sim-") as tmp:
        async with Emitter(bootstrap_servers, spool_dir=spool_dir or Path(tmp)) as emitter:
            start = time.monotonic()
            while summary.events < total:
                due = min(total, int((time.monotonic() - start) * rate) + 1)
                while summary.events < due:
                    call = next(calls)
                    emit(emitter, call)
                    summary.add(call)
                if progress is not None:
                    progress(summary.events, total)
                await asyncio.sleep(0.01)
            await emitter.flush()
            if progress is not None:
                progress(summary.events, total)
            # The summary is of what Tally stored: wait for its end-to-end acknowledgement
            # (through a broker or worker restart too), however long that takes.
            while not await emitter.wait_stored(STORED_WAIT_S):
                stats = emitter.stats()
                log.warning(
                    "waiting for Tally to store the events: %d acknowledged and not yet"
                    " confirmed, %d in memory, %d bytes in the spool; is `tally up` running?",
                    stats.unconfirmed,
                    stats.buffered,
                    stats.spool_pending_bytes,
                )
    return summary
