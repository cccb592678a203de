"""The benchmark workload: the simulator's event mix as wire bytes, with exact expectations."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson


@dataclass
class Workload:
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    tokens: Counter[str] = field(default_factory=Counter)  # live tokens per org

    @property
    def orgs(self) -> list[str]:
        return sorted(self.tokens)


def generate(events: int, orgs: int = 50, agents: int = 200, seed: int = 1) -> Workload:
    """Sessions of runs making LLM and tool calls, a few gateway requests, some test traffic."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    w = Workload()
    org_ids = [f"bench-org-{i:04d}" for i in range(orgs)]
    for org in org_ids:
        w.tokens[org] = 0
    for i in range(events):
        org = org_ids[i % orgs]
        live = rng.random() > 0.05
        base = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "org_id": org,
            "agent_id": f"agent-{rng.randrange(agents)}",
            "run_id": f"run-{rng.randrange(events // 20 + 1)}",
            "session_id": f"s-{i // 50}",
            "key_mode": "live" if live else "test",
            "ts": (now - timedelta(seconds=rng.randrange(3600))).isoformat(),
        }
        roll = rng.random()
        if roll < 0.6:
            inp, out = rng.randrange(50, 4000), rng.randrange(10, 800)
            event = {
                **base,
                "type": "llm.usage",
                "model": rng.choice(["gpt-4o", "gpt-4o-mini"]),
                "input_tokens": inp,
                "output_tokens": out,
                "cached_input_tokens": rng.randrange(0, inp // 2 + 1),
                "mode": "managed",
            }
            if live:
                w.tokens[org] += inp + out
        elif roll < 0.92:
            event = {
                **base,
                "type": "tool.call",
                "connector": rng.choice(["github", "slack"]),
                "tool": "search",
                "success": rng.random() > 0.05,
            }
        else:
            event = {**base, "type": "gateway.request", "model": "gpt-4o-mini", "cache_hit": False}
        w.messages.append((org.encode(), orjson.dumps(event)))
    return w
