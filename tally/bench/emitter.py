"""What emitting costs the runtime: the time of one helper call, delivery excluded."""

from __future__ import annotations

import time
from pathlib import Path

from producers.emitter import Emitter


async def emit_cost(bootstrap: str, spool_dir: Path, calls: int) -> float:
    """Median over 20 rounds of the mean microseconds per `llm_usage` call."""
    rounds = []
    async with Emitter(bootstrap, spool_dir=spool_dir) as emitter:
        per_round = max(1, calls // 20)
        for r in range(20):
            started = time.perf_counter()
            for i in range(per_round):
                emitter.llm_usage(
                    org_id="emit-org",
                    agent_id="agent",
                    model="gpt-4o-mini",
                    input_tokens=100 + i,
                    output_tokens=20,
                    run_id=f"run-{r}",
                )
            rounds.append((time.perf_counter() - started) / per_round * 1e6)
            await emitter.flush()  # delivery happens between rounds, not in the timing
    rounds.sort()
    return round(rounds[len(rounds) // 2], 2)
