"""What a migration's new tables need from before they existed.

`Store.migrate()` runs a migration's backfill after its statements and before recording it.
Migrations may run in several processes at once, and a process may die half-way and run
the migration again: a backfill must leave the same rows however often it runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tally.store.queries import (
    DERIVED_KEYS,
    EVENT_IDS_BACKFILL,
    RUNS_BY_DAY_BACKFILL,
    derived_month_matches,
    derived_select,
)


class Store(Protocol):
    """What a backfill needs of `tally.store.Store` (which runs the backfills)."""

    async def query(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> Any: ...


log = logging.getLogger("tally.store")
REPLACE_ATTEMPTS = 10


async def report_rollups(store: Store) -> None:
    """Fill the rollups derived from usage_daily (007) with what usage_daily holds.

    Month by month (the tables' partitions), each derived month is computed into a staging
    table of this run's own and swapped in whole (`REPLACE PARTITION`): a second run, a
    concurrent one or a run after a crash replaces it with the same rows, never adds them
    twice. Two runs replacing the same month at the same moment can both leave their rows
    (MergeTree does not order two concurrent replaces of one partition): each run checks
    the month against usage_daily after its replace and replaces it again if it disagrees.
    Rows usage_daily receives meanwhile reach the derived rollups through their
    materialized views; run migrations before starting the workers (docs/deploy.md), and
    the worker's check (`ClickHouseSink.repair`) rebuilds any day that disagrees. A run
    killed half-way can leave its staging table (`<table>_backfill_<id>`) behind: a copy,
    safe to drop.
    """
    months = [
        str(row[0])
        for row in await store.query("SELECT DISTINCT _partition_id FROM usage_daily ORDER BY 1")
    ]
    for table in DERIVED_KEYS:
        for month in months:
            if not month.isdigit():  # toYYYYMM(day): only digits reach the SQL text
                raise ValueError(f"unexpected partition of usage_daily: {month!r}")
            for attempt in range(REPLACE_ATTEMPTS):
                await _replace_month(store, table, month)
                rows = await store.query(derived_month_matches(table), {"month": month})
                if rows[0][0]:
                    break
                log.warning(
                    "%s, month %s: another run replaced it at the same time; replacing again",
                    table,
                    month,
                )
                await asyncio.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
            else:
                raise RuntimeError(
                    f"{table}, month {month}: still differs from usage_daily after"
                    f" {REPLACE_ATTEMPTS} replaces; start Tally again to run the migration again"
                )


async def _replace_month(store: Store, table: str, month: str) -> None:
    """Compute the month into a staging table of this run's own and swap it in whole."""
    stage = f"{table}_backfill_{uuid.uuid4().hex[:12]}"
    await store.command(f"CREATE TABLE {stage} AS {table}")
    try:
        select = derived_select(table, "_partition_id = {month:String}")
        await store.command(f"INSERT INTO {stage} {select}", {"month": month})
        await store.command(f"ALTER TABLE {table} REPLACE PARTITION ID '{month}' FROM {stage}")
    finally:
        await store.command(f"DROP TABLE IF EXISTS {stage}")


async def event_ids(store: Store) -> None:
    """Copy the ids of the events stored before `event_ids` existed (008) into it.

    One `INSERT ... SELECT` over `events`, streamed by ClickHouse (memory stays bounded).
    A second run, a concurrent one or a run after a crash copies rows again: `event_ids` is
    a ReplacingMergeTree keyed by `(org_id, event_id)`, and a copy has the same
    `ingested_at` (so the same partition) as the row it repeats, so the copies merge away,
    and every read counts distinct ids meanwhile. Nothing is ever lost: rows the workers
    store during the copy reach `event_ids` through its materialized view, and the readers
    take the ids of `events` too. What retention had deleted before this migration is not
    in `events` to copy: those ids were already unknown to the dedup and to the look-ups.
    """
    await store.command(EVENT_IDS_BACKFILL)


async def runs_by_day(store: Store) -> None:
    """Split the usage_runs rows stored before they had a day (015) by the day of their
    events.

    Each undated row becomes the rows of its raw events by day, plus what the raw events no
    longer hold (retention deleted the oldest days) on the day of its first event: the sums
    stay what they were, and the rollup check, which compares runs with the raw events day
    by day, finds them whole. The whole table (one MergeTree partition) is computed into a
    staging table of this run's own and swapped in (`REPLACE PARTITION`): a second run, a
    concurrent one or a run after a crash swaps in the same rows, never adds them twice. Run
    migrations before starting the workers (docs/deploy.md): rows stored during the swap
    would be replaced away.
    """
    undated = await store.query("SELECT count() FROM usage_runs WHERE day = toDate(0)")
    if not undated[0][0]:
        return
    stage = f"usage_runs_backfill_{uuid.uuid4().hex[:12]}"
    await store.command(f"CREATE TABLE {stage} AS usage_runs")
    try:
        await store.command(f"INSERT INTO {stage} {RUNS_BY_DAY_BACKFILL}")
        await store.command(f"ALTER TABLE usage_runs REPLACE PARTITION ID 'all' FROM {stage}")
    finally:
        await store.command(f"DROP TABLE IF EXISTS {stage}")


BACKFILLS: dict[str, Callable[[Store], Awaitable[None]]] = {
    "007_report_rollups.sql": report_rollups,
    "008_event_ids.sql": event_ids,
    "015_usage_runs_by_day.sql": runs_by_day,
}
