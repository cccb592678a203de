"""Run every measurement in one process, on one embedded broker, and report them."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from commands.bench import (
    admission,
    drain,
    emitter,
    freshness,
    http,
    ingest,
    prepare,
    queries,
    start,
)
from commands.bench.workload import Workload, generate
from commands.runtime import Tally, settle_gc
from tally.broker import EmbeddedBroker
from tally.config import Settings
from tally.topics import ensure_topics

GOALS = {
    "drain_ratio": (">=", 0.8),
    "freshness_load_p99_ms": ("<=", 200.0),
    "http_ratio": (">=", 0.5),
    "http_p99_ratio": ("<=", 1.5),  # Tally's p99 against the bare app's, same run
    "breakdown_p95_ms": ("<=", 50.0),
    "calllog_p95_ms": ("<=", 50.0),
    "api_bytes_per_key": ("<=", 200.0),
    "worker_bytes_per_key": ("<=", 200.0),
    "emit_us": ("<=", 10.0),
    # At a steady 10,000 events/s an emitter holds about a second of events until Tally
    # confirms them stored (end-to-end acknowledgement), not more.
    "emit_held_max_s": ("<=", 1.5),
    # `tally up` on a fresh data dir, from the command to /readyz; then idle, each process's
    # share of one core.
    "start_ready_s": ("<=", 3.0),
    "idle_cpu_tally": ("<=", 0.02),
    "idle_cpu_broker": ("<=", 0.02),
    # Runs whose days are all past the counters' horizon are forgotten: none is left.
    "runs_kept_after_horizon": ("<=", 0),
}


async def run(
    events: int,
    orgs: int,
    partitions: int,
    samples: int,
    load_rate: int,
    http_seconds: int,
    connections: int,
    memory_keys: int,
    breakdown_rows: int,
    only_breakdowns: bool = False,
    ingest_requests: int = 40,
    runs: int = 1_000_000,
    only_checks: bool = False,
    check_callers: int = 32,
    check_seconds: float = 5.0,
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }
    only_breakdowns = only_breakdowns and not only_checks
    if not only_breakdowns and not only_checks:
        figures.update(await start.start_and_idle())  # first, alone on the machine
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as tmp:
        async with EmbeddedBroker() as broker:
            await ensure_topics(broker.bootstrap_servers, partitions)
            workload = None if only_breakdowns or only_checks else generate(events, orgs=orgs)
            if workload is not None:
                figures.update(events=events, partitions=partitions)
                figures.update(prepare.costs(workload))
                figures["produce_eps"] = round(
                    await drain.produce(broker.bootstrap_servers, workload)
                )
                figures["ceiling_eps"] = round(
                    await drain.ceiling(broker.bootstrap_servers, partitions, events)
                )
            settings = Settings(
                data_dir=Path(tmp),
                bootstrap_servers=broker.bootstrap_servers,
                partitions=partitions,
                log_epoch="bench",
            )
            tally = Tally(settings)
            await tally.start()
            settle_gc()  # as `tally up` does once started
            try:
                if workload is not None:
                    await stream_figures(tally, workload, samples, load_rate, figures, broker.pid)
                    await http_figures(tally, connections, http_seconds, figures)
                    # HTTP ingestion, stored: the worker runs since the drain.
                    figures.update(await ingest.ingest_rates(tally, ingest_requests))
                # Admission checks beside the reads: strict (the worker decides) and plain.
                if not only_breakdowns:
                    if only_checks:
                        await tally.start_worker()  # otherwise started by the drain
                    assert tally.worker is not None
                    await asyncio.wait_for(tally.worker.ready.wait(), 120)
                    figures.update(await admission.checks(tally, check_callers, check_seconds))
                if not only_checks:
                    figures.update(
                        await queries.breakdowns(
                            tally, breakdown_rows, orgs=100, agents=1000, days=30, queries=440
                        )
                    )
                if workload is not None:
                    # Last: their events go to the same topic, after every other figure is
                    # taken; Tally runs, so the emitters get their stored marks.
                    figures["emit_us"] = await emitter.emit_cost(
                        broker.bootstrap_servers, Path(tmp) / "spool", 20_000
                    )
                    figures.update(
                        await emitter.held(
                            broker.bootstrap_servers, Path(tmp) / "spool-held", load_rate, 6.0
                        )
                    )
            finally:
                await tally.stop()
    if not only_breakdowns and not only_checks:
        figures.update(await memory(memory_keys))
        figures.update(await in_process("commands.bench.runs", runs))
    return figures


async def stream_figures(
    tally: Tally,
    workload: Workload,
    samples: int,
    load_rate: int,
    figures: dict[str, Any],
    broker_pid: int | None = None,
) -> None:
    """Drain against the ceiling, then freshness idle and under load."""
    figures["tally_drain_eps"] = round(await drain.tally_drain(tally, workload))
    figures["drain_ratio"] = round(figures["tally_drain_eps"] / figures["ceiling_eps"], 3)
    idle = await freshness.freshness(tally, samples, 0, broker_pid)
    figures["freshness_idle_p50_ms"] = idle["p50_ms"]
    figures["freshness_idle_p99_ms"] = idle["p99_ms"]
    figures["freshness_idle_broker_cpu"] = idle["broker_cpu"]
    loaded = await freshness.freshness(tally, samples, load_rate, broker_pid)
    figures["backlog_after_load_s"] = await drain.caught_up(tally)
    figures["freshness_load_rate"] = load_rate
    figures["freshness_load_eps"] = loaded["load_eps"]
    figures["freshness_load_cpu"] = loaded["load_cpu"]
    # The embedded broker's cost per request grows with the record batches it holds (see
    # docs/benchmarks.md): the cores it took while probing under load.
    figures["freshness_load_broker_cpu"] = loaded["broker_cpu"]
    figures["freshness_load_p50_ms"] = loaded["p50_ms"]
    figures["freshness_load_p99_ms"] = loaded["p99_ms"]


async def http_figures(
    tally: Tally, connections: int, http_seconds: int, figures: dict[str, Any]
) -> None:
    """Quota reads over HTTP, Tally and a bare ASGI app, and the in-process lookup."""
    reads = await http.quota_reads(tally, connections, http_seconds)
    figures["lookup_us"] = reads["lookup_us"]
    if "skipped" in reads:
        figures["http_skipped"] = reads["skipped"]
        return
    figures["http_connections"] = connections
    figures["http_rounds"] = reads["rounds"]
    for side in ("tally", "bare"):
        for k, v in reads[side].items():
            figures[f"http_{side}_{k}"] = v
    figures["http_ratio"] = reads["ratio"]
    # Tally's tail against the bare app's, measured in the same turns (2 cores: the bare
    # app's own p99 is milliseconds, so an absolute bound measures the machine).
    bare = figures.get("http_bare_p99_ms") or 0
    if bare:
        figures["http_p99_ratio"] = round(figures["http_tally_p99_ms"] / bare, 3)


async def in_process(module: str, size: int) -> dict[str, Any]:
    """A measurement module's JSON figures, run in a fresh process of its own."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, str(size), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return dict(json.loads(out))


async def memory(keys: int) -> dict[str, Any]:
    data = await in_process("commands.bench.memory", keys)
    return {
        "memory_keys": keys,
        "api_bytes_per_key": data["api_bytes_per_key"],
        "worker_bytes_per_key": data["worker_bytes_per_key"],
    }


def verdicts(figures: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, (op, goal) in GOALS.items():
        if name not in figures:
            out[name] = "not measured"
            continue
        value = figures[name]
        met = value >= goal if op == ">=" else value <= goal
        out[name] = f"{'met' if met else 'MISSED'} ({value} {op} {goal})"
    return out


def report(figures: dict[str, Any]) -> str:
    lines = [f"{'figure':<28} value"]
    lines += [f"{k:<28} {v}" for k, v in figures.items()]
    lines.append("")
    lines += [f"goal {k:<23} {v}" for k, v in verdicts(figures).items()]
    return "\n".join(lines)


def main(**kwargs: Any) -> dict[str, Any]:
    started = time.perf_counter()
    figures = asyncio.run(run(**kwargs))
    figures["bench_seconds"] = round(time.perf_counter() - started, 1)
    print(report(figures))
    print(json.dumps(figures))
    return figures
