"""`tally bench` as a user runs it, at small sizes: every figure, the goals, one JSON line.

The figures at these sizes say nothing about speed (docs/benchmarks.md has the real runs);
what is checked is that each is measured, in one run, and reported as the issue asks."""

from __future__ import annotations

import json
import shutil

from commands.bench.run import GOALS
from tests.integration.ops import tally

SIZES = {
    "--events": "4000",
    "--orgs": "10",
    "--samples": "5",
    "--load-rate": "500",
    "--http-seconds": "4",
    "--connections": "4",
    "--memory-keys": "20000",
    "--breakdown-rows": "20000",
    "--runs": "20000",
    "--check-callers": "4",
    "--check-seconds": "1",
}
MEASURED = (
    "ceiling_eps",
    "tally_drain_eps",
    "freshness_idle_p50_ms",
    "freshness_idle_p99_ms",
    "freshness_load_eps",
    "freshness_load_p50_ms",
    "freshness_load_p99_ms",
    "lookup_us",
    "breakdown_p50_ms",
    "breakdown_p95_ms",
    "calllog_p50_ms",
    "calllog_p95_ms",
    "api_bytes_per_key",
    "worker_bytes_per_key",
    "emit_us",
    "emit_held_p50_s",
    "emit_held_max_s",
    "prepare_each_us",
    "prepare_columns_us",
    "start_ready_s",
    "ingest_events_eps",
    "otlp_spans_per_s",
    "runs_worker_bytes_per_run",
    "runs_state_bytes_per_run",
    "runs_count_us_per_event",
    "check_strict_per_s",
    "check_strict_p50_ms",
    "check_strict_p99_ms",
    "check_plain_per_s",
    "check_plain_p50_ms",
    "check_plain_p99_ms",
)
HTTP = ("rps", "p50_ms", "p99_ms")


async def test_the_bench_prints_every_figure_then_the_goals_then_one_json_line():
    run = await tally("bench", *(x for pair in SIZES.items() for x in pair), timeout=300)
    assert run.code == 0, run.err
    *table, last = run.out.strip().splitlines()
    figures = json.loads(last)

    # The sizes asked for, and every figure measured (none left at zero or out).
    assert (figures["events"], figures["memory_keys"], figures["breakdown_rows"]) == (
        4000,
        20000,
        20000,
    )
    assert figures["freshness_load_rate"] == figures["emit_held_rate"] == 500
    assert figures["emit_held_drained_s"] is not None  # every held event was confirmed stored
    assert figures["prepare_fetch"] == 4000  # the workload holds fewer than a fetch's worth
    # Every run counted once (the measurement checks it), none left past the horizon.
    assert (figures["runs"], figures["runs_events"]) == (20000, 40000)
    assert figures["runs_kept_after_horizon"] == 0
    for name in MEASURED:
        assert figures[name] > 0, name
    assert 0 <= figures["idle_cpu_tally"] < 2 and 0 <= figures["idle_cpu_broker"] < 2
    assert figures["freshness_idle_p50_ms"] <= figures["freshness_idle_p99_ms"]
    assert figures["freshness_load_p50_ms"] <= figures["freshness_load_p99_ms"]
    assert figures["breakdown_p50_ms"] <= figures["breakdown_p95_ms"]
    assert figures["calllog_p50_ms"] <= figures["calllog_p95_ms"]
    assert figures["calllog_pages"] >= 40  # at least the first page of every walk
    # Every check was answered, and allowed: the strict ones by the worker's decision.
    assert set(figures["check_strict_codes"]) == set(figures["check_plain_codes"]) == {"200"}
    assert figures["check_strict_p50_ms"] <= figures["check_strict_p99_ms"]
    # Ratios are of figures of the same run.
    assert figures["drain_ratio"] == round(figures["tally_drain_eps"] / figures["ceiling_eps"], 3)
    if shutil.which("wrk"):
        assert (figures["http_connections"], figures["http_rounds"]) == (4, 2)  # turns of 2 s
        for side in ("tally", "bare"):
            for name in HTTP:
                assert figures[f"http_{side}_{name}"] > 0, (side, name)
            assert figures[f"http_{side}_p50_ms"] <= figures[f"http_{side}_p99_ms"]
        assert figures["http_ratio"] == round(
            figures["http_tally_rps"] / figures["http_bare_rps"], 3
        )
        assert figures["http_p99_ratio"] == round(
            figures["http_tally_p99_ms"] / figures["http_bare_p99_ms"], 3
        )
    else:
        assert "wrk" in figures["http_skipped"]

    # The table: each figure with its value, then a verdict per goal, with the value it is on.
    rows = dict(line.split(None, 1) for line in table if line and not line.startswith("goal "))
    assert rows["ceiling_eps"] == str(figures["ceiling_eps"])
    assert rows["drain_ratio"] == str(figures["drain_ratio"])
    verdicts = {
        line.split()[1]: line.split(None, 2)[2] for line in table if line.startswith("goal ")
    }
    assert set(verdicts) == set(GOALS)
    for name, (op, goal) in GOALS.items():
        if name not in figures:
            assert verdicts[name] == "not measured", name
            continue
        met = figures[name] >= goal if op == ">=" else figures[name] <= goal
        assert verdicts[name] == f"{'met' if met else 'MISSED'} ({figures[name]} {op} {goal})"
