"""The ClickHouse sink: store a batch and its offset watermark, rebuild partition state.

Rows carry their partition and offset, so the data is its own watermark; an `offsets` row
follows every stored batch so that batches with nothing to store still move the mark.
Inserts that fail are retried with backoff and the worker does not move on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from streams import runs as run_state
from streams.admissions import RESERVATION_COLUMNS, reserved
from streams.batch import PartitionState
from streams.leases import ENDED, STARTED
from streams.rows import event_block
from tally.domain import counters, runs
from tally.domain.leases import Lease
from tally.domain.reservations import Hold, lapse
from tally.store import Store
from tally.store import queries as q

log = logging.getLogger("tally.sink")

COUNTER_HISTORY_DAYS = 70
MINUTE_HISTORY_S = 3_600
BLOCK_ROWS = 500


# The events columns that are LowCardinality in the store go as Arrow dictionaries, which
# ClickHouse takes as they are: the insert's own work is about a sixth less (measured on
# chDB: 9.5 -> 8.1 us a row, of which the materialized views take 7.5).
_LOW_CARDINALITY = ("type", "key_mode", "line_item", "item", "mode", "provider", "log_epoch")


def _dictionaries(block: pa.Table) -> pa.Table:
    for name in _LOW_CARDINALITY:
        index = block.schema.get_field_index(name)
        block = block.set_column(index, name, pc.dictionary_encode(block.column(name)))
    return block


class ClickHouseSink:
    def __init__(self, store: Store, log_epoch: str, dedup_window_s: int) -> None:
        self.store = store
        self.base_epoch = log_epoch
        self.dedup_window_s = dedup_window_s
        self.failures = 0

    async def write(
        self,
        rows: list[list[object]],
        marks: dict[int, tuple[str, int, int]],
        blocks: Sequence[pa.Table] = (),
        reservations: Sequence[list[object]] = (),
    ) -> None:
        """Store the admission decisions and settlements, the rows (and blocks of rows
        already in columns), then per partition the next offset and the CRC-32 of the
        message before it; retry until all are stored. Reservation rows go first: a rebuild
        takes only those below the stored mark, so a batch read again decides again."""
        if not rows and not marks and not blocks:
            return
        now = datetime.now(UTC)
        offset_rows = [[e, p, nxt, crc, now] for p, (e, nxt, crc) in marks.items()]
        # The same batch retried carries the same token, and ClickHouse stores it once.
        token = ",".join(f"{e}|{p}:{n}" for p, (e, n, _) in sorted(marks.items()))
        # Converted a slice at a time on the loop, which runs in between: converting holds
        # the interpreter either way, and one long stretch would hold up quota reads.
        parts = list(blocks)
        for i in range(0, len(rows), BLOCK_ROWS):
            parts.append(event_block(rows[i : i + BLOCK_ROWS]))
            await asyncio.sleep(0)
        block = pa.concat_tables(parts) if parts else event_block([])
        block = await asyncio.to_thread(_dictionaries, block)  # Arrow releases the interpreter
        delay = 0.1
        while True:
            try:
                if reservations:
                    await self.store.insert(
                        "reservations",
                        [[*row, now] for row in reservations],
                        (*RESERVATION_COLUMNS, "at"),
                        settings={"insert_deduplication_token": token},
                    )
                await self.store.insert_arrow(
                    "events",
                    block,
                    settings={
                        "insert_deduplication_token": token,
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                        # The rollups' views group the block already: merging their rows
                        # again as they are written took almost half the insert (chDB:
                        # 9.5 -> 5.2 us a row). Their readers sum by key, as they must
                        # across parts anyway.
                        "optimize_on_insert": 0,
                    },
                )
                await self.store.insert(
                    "offsets",
                    offset_rows,
                    ("log_epoch", "partition", "next_offset", "last_crc", "at"),
                )
                return
            except Exception as exc:  # the store is down or refused: wait, never skip
                self.failures += 1
                log.warning("store write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def write_gaps(self, epoch: str, partition: int, gaps: list[tuple[int, int]]) -> None:
        """Store offsets passed without being read (before any mark past them is stored);
        retry until stored."""
        now = datetime.now(UTC)
        rows = [[epoch, partition, first, last, now] for first, last in gaps]
        delay = 0.1
        while True:
            try:
                await self.store.insert(
                    "offset_gaps",
                    rows,
                    ("log_epoch", "partition", "first_offset", "last_offset", "at"),
                )
                return
            except Exception as exc:  # the store is down: wait, never skip
                self.failures += 1
                log.warning("store write of offset gaps failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def gaps(self, epoch: str, partition: int, limit: int) -> list[tuple[int, int]]:
        """The latest `limit` gaps passed in a partition's log of `epoch`, oldest first."""
        rows = await self.store.query(*q.offset_gaps(epoch, partition, limit))
        return [(int(first), int(last)) for first, last in reversed(rows)]

    def epoch_for(self, cluster: str) -> str:
        """The epoch of an embedded broker's log, named by its cluster id (fresh at each of
        its starts): the base epoch itself when the base is that id (`tally up`)."""
        return self.base_epoch if self.base_epoch == cluster else f"{self.base_epoch}.{cluster}"

    def new_epoch(self) -> str:
        """A fresh epoch, for a broker log that is not the one the stored marks belong to."""
        return f"{self.base_epoch}.{uuid.uuid4().hex[:12]}"

    async def repair(self, partition: int) -> list[date]:
        """Rebuild the rollups of org-days where they hold fewer events than the raw events,
        then the derived rollups of days where they disagree with usage_daily; returns those
        days. An org-day whose raw events retention has partly deleted is not rebuilt
        from what is left: its rollups are the only record of the deleted events."""
        days = await self._repair_from_events(partition)
        gaps: dict[str, list[date]] = {}
        for table, day in await self.store.query(*q.derived_gaps(partition)):
            gaps.setdefault(table, []).append(day)
        for table, table_days in gaps.items():
            log.warning(
                "partition %d: %s disagrees with usage_daily on %s; rebuilding it",
                partition,
                table,
                [d.isoformat() for d in table_days],
            )
            for statement in q.rebuild_derived(table, partition, table_days):
                await self.store.command(*statement)
        return sorted({*days, *(d for table_days in gaps.values() for d in table_days)})

    async def _repair_from_events(self, partition: int) -> list[date]:
        gap_days = [row[0] for row in await self.store.query(*q.rollup_gaps(partition))]
        if not gap_days:
            return []
        gaps = [(org, day) for org, day in await self.store.query(*q.org_gaps(partition, gap_days))]
        if not gaps:
            return []
        orgs = sorted({org for org, _ in gaps})
        deleted: dict[str, list[date]] = {}
        for org, day in await self.store.query(
            *q.deleted_days(partition, orgs, min(d for _, d in gaps), max(d for _, d in gaps))
        ):
            deleted.setdefault(org, []).append(day)
        # What retention deleted is in the rollups only: an org-day that lost raw events to
        # it is left as it is rather than rebuilt from the rest.
        fixable = [(org, day) for org, day in gaps if day not in deleted.get(org, ())]
        kept = [f"{org} {day.isoformat()}" for org, day in gaps if (org, day) not in fixable]
        if kept:
            log.warning(
                "partition %d: rollups miss events of %s, which lost raw events to retention;"
                " kept as they are (the rollups hold the deleted events)",
                partition,
                kept,
            )
        if fixable:
            log.warning(
                "partition %d: rollups disagree with events on %s; rebuilding them",
                partition,
                [f"{org} {day.isoformat()}" for org, day in fixable],
            )
            for statement in q.repair_rollups(partition, fixable):
                await self.store.command(*statement)
        return sorted({day for _, day in fixable})

    async def load(self, partition: int, partitions: int) -> PartitionState:
        """Rebuild one partition's state from what is stored (repairing its rollups first).

        The offsets are the partition's own; counters, sessions and the dedup window are
        those of the orgs that map to `partition` among `partitions`, wherever their rows
        were stored (so they follow an org whose partition changed with the count).
        """
        if partitions <= partition:
            raise ValueError(f"partition {partition} is not among {partitions} partitions")
        await self.repair(partition)
        rows = await self.store.query(*q.latest_epoch(self.base_epoch, partition))
        epoch = rows[0][0] if rows and rows[0][0] else self.base_epoch
        state = PartitionState(partition, partitions, epoch=epoch)
        marks = [
            (int(n), int(crc))
            for n, crc, seen in await self.store.query(*q.watermark(epoch, partition))
            if seen
        ]
        if marks:
            # The furthest mark; its check only when the offsets row (listed first) has it.
            state.next_offset = max(n for n, _ in marks)
            crc = next((c for n, c in marks if n == state.next_offset and c), 0)
            if state.next_offset and crc:
                state.check = (state.next_offset - 1, crc)
        since = datetime.now(UTC).date() - timedelta(days=COUNTER_HISTORY_DAYS)
        for org, line_item, day, billable, cost, unpriced, upstream in await self.store.query(
            *q.daily_counters(partition, partitions, since)
        ):
            meter = counters.METER_OF_LINE_ITEM.get(line_item)
            if meter and billable:
                state.counters[(org, meter, int(day))] = int(billable)
            if cost:
                state.counters[(org, counters.COST_PREFIX + line_item, int(day))] = int(cost)
            if upstream:
                state.counters[(org, counters.UPSTREAM_COST, int(day))] = int(upstream)
            if unpriced:
                key = (org, counters.UNPRICED, int(day))
                state.counters[key] = state.counters.get(key, 0) + int(unpriced)
        now_s = int(time.time())
        for org, minute, billable in await self.store.query(
            *q.minute_counters(partition, partitions, now_s - MINUTE_HISTORY_S)
        ):
            if billable:
                state.counters[(org, counters.REQUESTS_MINUTE, int(minute))] = int(billable)
        for org, session_id, started, ended, seen, agent, run in await self.store.query(
            *q.open_sessions(partition, partitions)
        ):
            flags = (STARTED if started else 0) | (ENDED if ended else 0)
            state.sessions[(org, session_id)] = flags
            if flags == STARTED:
                key = (org, counters.SESSIONS, 0)
                state.counters[key] = state.counters.get(key, 0) + 1
                state.leases[(org, session_id)] = Lease(_utc(seen), agent, run)
        await self._load_holds(state)
        for event_id, at_ms in await self.store.query(
            *q.recent_event_ids(partition, partitions, now_s - self.dedup_window_s)
        ):
            state.seen[event_id] = at_ms / 1000
        await self._load_runs(state, partition, partitions)
        return state

    async def _load_runs(self, state: PartitionState, partition: int, partitions: int) -> None:
        """The runs meter: each live run's active days of the kept days, and the counters
        they make (tally.domain.runs), as the worker that counted them had them; the days of
        MAX_GAP days before are read too, for the gaps of the kept ones."""
        keep_from = counters.first_kept_day(datetime.now(UTC))
        since = counters.day_of(keep_from - runs.MAX_GAP)
        await self.store.command(*q.copy_run_days(partition, partitions, since))
        kept = state.counters
        for org, run_id, stored in await self.store.query(
            *q.run_days(partition, partitions, since)
        ):
            days = tuple(int(d) for d in stored)
            trimmed = runs.trim(days, keep_from)
            if trimmed is None:
                continue
            state.runs[run_state.key(org, run_id)] = runs.shared(trimmed)
            for name, day in runs.counted(days):
                if day >= keep_from:
                    k = counters.key(org, name, day)
                    kept[k] = kept.get(k, 0) + 1

    async def _load_holds(self, state: PartitionState) -> None:
        """The reservations the orgs of the partition hold, as the log decided them up to
        the stored mark: held and not settled, and not lapsed at the org's clock."""
        at = (state.partition, state.partitions, state.epoch, state.next_offset)
        for org, clock in await self.store.query(*q.org_clocks(*at)):
            state.clocks[org] = _utc(clock)
        for org, rid, meter, amount, expires in await self.store.query(*q.held_reservations(*at)):
            if _utc(expires) > state.clocks[org]:
                hold = Hold(meter, int(amount), _utc(expires))
                state.holds.setdefault(org, {})[rid] = hold
        now = datetime.now(UTC)  # what reads show: lapses at once (streams.admissions)
        for org, holds in state.holds.items():
            shown = reserved(lapse(holds, now))
            for meter in reserved(holds):
                amount = shown.get(meter, 0)
                state.counters[(org, counters.RESERVED_PREFIX + meter, 0)] = amount


def _utc(ts: datetime) -> datetime:
    """A time read from the store, aware and in UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
