"""What emitting costs the runtime: the time of one helper call, delivery excluded; and how
much an emitter holds, waiting for Tally to confirm it stored (end-to-end acknowledgement),
under a steady load."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from commands.bench.stats import percentile
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


async def held(bootstrap: str, spool_dir: Path, rate: int, seconds: float) -> dict[str, Any]:
    """Emit `rate` events/s for `seconds` with Tally storing them, and sample every 50 ms how
    many the emitter holds (sent, not yet confirmed as stored, or not yet sent), in seconds
    of events at that rate; then how long the last one took to be confirmed."""
    samples: list[float] = []
    async with Emitter(bootstrap, spool_dir=spool_dir) as emitter:
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - started < seconds:
            due = int((now - started) * rate)
            for i in range(sent, due):
                emitter.llm_usage(
                    org_id=f"held-org-{i % 20}",
                    agent_id="agent",
                    model="gpt-4o-mini",
                    input_tokens=100,
                    output_tokens=20,
                )
            sent = max(sent, due)
            stats = emitter.stats()
            if now - started > 1.0:  # past the start
                samples.append((stats.unconfirmed + stats.buffered) / rate)
            await asyncio.sleep(0.05)
        waited = time.monotonic()
        stored = await emitter.wait_stored(60)
        drained_s = time.monotonic() - waited
    samples.sort()
    return {
        "emit_held_rate": rate,
        "emit_held_p50_s": round(percentile(samples, 50), 3),
        "emit_held_max_s": round(samples[-1], 3),
        "emit_held_drained_s": round(drained_s, 3) if stored else None,
    }
