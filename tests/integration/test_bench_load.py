"""The bench's background load: every event on its org's partition, every one counted."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from commands.bench.freshness import LOAD_ORGS, _load, freshness
from tally.domain import counters
from tests.conftest import eventually


async def test_the_background_load_is_delivered_to_each_orgs_partition_and_counted(stack):
    table = stack.services.counters
    day = counters.epoch_day(datetime.now(UTC))

    def totals() -> dict[str, int]:
        return {org: table.total(org, counters.TOKENS, (day - 1, day)) for org in LOAD_ORGS}

    before, forwarded = totals(), stack.worker.forwarded
    sent = await _load(stack.settings.bootstrap_servers, rate=5_000, seconds=60, limit=2_000)
    assert sent == 2_000
    per_org = sent // len(LOAD_ORGS)

    async def counted() -> bool:
        return totals() == {org: n + per_org for org, n in before.items()}

    await eventually(counted, timeout=20)
    assert stack.worker.forwarded == forwarded  # none arrived on another org's partition


async def test_freshness_reports_its_samples_and_the_cores_the_broker_took(stack, broker):
    assert broker.pid is not None
    figures = await freshness(stack, samples=150, background_rate=2_000, broker_pid=broker.pid)
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert figures["load_eps"] > 0
    # The broker served the probes and the load: it used some CPU, and at most both cores.
    assert 0 < figures["broker_cpu"] <= (os.cpu_count() or 1)
    without = await freshness(stack, samples=5, background_rate=0)
    assert without["broker_cpu"] == 0.0  # no process named, no figure
