"""A runtime process for the restart tests: emits N events, then exits (or dies at once).

    python -m tests.integration.emitting_process BOOTSTRAP SPOOL ORG N FIRST MODE

Event i (from FIRST) has i + 1 input tokens and 1 output token. MODE: `close` (flush and
close, the normal end), `deliver` (wait until the spool is empty too), or `crash` (end the
process with os._exit right after the calls: no flush, no close). Prints the emitter's
counters as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys

from producers.emitter import Emitter


async def main(bootstrap: str, spool: str, org: str, n: int, first: int, mode: str) -> None:
    emitter = Emitter(
        bootstrap, spool_dir=spool, delivery_timeout_ms=2_000, reconnect_backoff_ms=(100, 500)
    )
    await emitter.start()
    for i in range(first, first + n):
        emitter.llm_usage(
            org_id=org, agent_id="runtime", model="gpt-4o", input_tokens=i + 1, output_tokens=1
        )
    if mode == "crash":
        print(json.dumps(dataclasses.asdict(emitter.stats())), flush=True)
        os._exit(0)
    if mode == "deliver":
        assert await emitter.wait_delivered(60), emitter.stats()
    await emitter.close()
    print(json.dumps(dataclasses.asdict(emitter.stats())), flush=True)


if __name__ == "__main__":
    bootstrap, spool, org, n, first, mode = sys.argv[1:]
    asyncio.run(main(bootstrap, spool, org, int(n), int(first), mode))
