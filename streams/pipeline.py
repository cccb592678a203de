"""The worker's store pipeline: prepared batches queued, stored in the background (rows
and offset watermark in one insert), then folded into the partition state, their counters
published and their offsets committed (informational). Mixed into `streams.worker.Worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.batch import BatchResult, PartitionState, apply, projected
from streams.logwatch import LogWatch
from streams.sessions import LeaseKeeper
from tally import failpoints, metrics
from tally.domain.counters import CounterKey

log = logging.getLogger("tally.worker")

Prepared = list[tuple[TopicPartition, BatchResult]]
PUBLISH_EVERY_S = 0.05
# A publication costs per key sent: a few changed keys go at once, more wait for the next
# PUBLISH_EVERY_S (under load a key changes in every fetch: only its latest value matters).
PUBLISH_AT_ONCE_KEYS = 16
STORE_EVERY_S = 0.25
COMMIT_TIMEOUT_S = 5.0


class StorePipeline(LogWatch):
    """Prepared, stored, applied (attributes: set by `Worker.__init__`)."""

    processed: int
    duplicates: int
    timings: dict[str, float]
    hand_over: Callable[[dict[CounterKey, int], int], None] | None
    _inflight: tuple[Prepared, asyncio.Task[None]] | None
    _queued: Prepared
    _early: dict[CounterKey, int]
    _sent_early_at: float
    _stored_at: float
    _committing: asyncio.Task[None] | None
    _leases: LeaseKeeper

    async def _settle_or_drop(self) -> None:
        """Settle before the owned partitions change; if that fails, drop what is prepared
        and not stored instead: whoever owns its partitions next reads it again from the
        stored marks and counts it once."""
        try:
            await self._settle()
        except Exception:
            log.exception("could not store the batches prepared; they will be read again")
            await self._drop_prepared()

    async def _drop_prepared(self) -> None:
        """Forget what is prepared and not stored. An insert under way is waited for first
        (it finishes or fails in the store's own time), so that a state built from the
        store afterwards has it, or not, for good."""
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight[1]
        self._inflight, self._queued, self._early = None, [], {}

    def _backlog(self) -> int:
        """Rows prepared and waiting for the insert after the one under way; at four fetches'
        worth the loop waits for the store (a bound on memory while the store is slow)."""
        return sum(r.stored for _, r in self._queued)

    def _due(self) -> bool:
        """Insert a fetch's worth at once, or what there is every STORE_EVERY_S: the counters
        are out already, and each insert costs the store a part to write and merge. Admission
        decisions go at once: their callers wait for them to be stored."""
        return bool(self._queued) and (
            self._backlog() >= self.settings.batch_max_records
            or time.monotonic() - self._stored_at >= STORE_EVERY_S
            or any(r.reservations for _, r in self._queued)
        )

    def _start_store(self) -> None:
        self._stored_at = time.monotonic()
        queued, self._queued = self._queued, []
        self._inflight = (queued, asyncio.create_task(self._store(queued)))

    async def _settle(self) -> None:
        """Publish and store everything prepared, and fold it into the state."""
        await self._publish_early(at_once=True)
        await self._complete()
        if self._queued:
            self._start_store()
            await self._complete()
        await self._committed()

    def _unapplied(self, partition: int) -> list[BatchResult]:
        """The partition's batches prepared but not yet applied, oldest first."""
        stored = self._inflight[0] if self._inflight else []
        return [r for tp, r in (*stored, *self._queued) if tp.partition == partition]

    def _read_to(self, partition: int, unapplied: list[BatchResult] | None = None) -> int:
        """The next offset to read: past every prepared batch, stored or not."""
        if unapplied is None:
            unapplied = self._unapplied(partition)
        return unapplied[-1].last_offset + 1 if unapplied else self.states[partition].next_offset

    def _count_early(
        self, state: PartitionState, result: BatchResult, before: list[BatchResult]
    ) -> None:
        """What a prepared batch makes of the counters, to publish before it is stored, so
        that quota reads see its events without waiting for the insert. This is safe: the
        values are absolute and a function of the events alone, so if the worker dies before
        the batch is stored, it is read and counted again and the same values come out; the
        offsets still move only once the batch is stored. A counter table in this process
        has them at once; the topic has them at the next publication."""
        values = projected(state, result, before)
        self._early.update(values)
        if self.hand_over is not None and values:
            self.hand_over(values, int(time.time() * 1000))

    async def _publish_early(self, at_once: bool = False) -> None:
        """Send the counters of prepared batches: a few keys at once, many at most every
        PUBLISH_EVERY_S (under load a key changes in every fetch, and its latest value is all
        a reader needs)."""
        early = self._early
        if early and (
            at_once
            or len(early) <= PUBLISH_AT_ONCE_KEYS
            or time.monotonic() - self._sent_early_at >= PUBLISH_EVERY_S
        ):
            self._early = {}
            await self._publish(early)
            self._sent_early_at = time.monotonic()

    async def _store(self, results: Prepared) -> None:
        """Dead letters and forwarded events first (so none is lost), then the rows with
        their offsets: a batch stored only after they are acknowledged is never read again,
        and one read again after a crash sends them again (the dedup window of the partition
        they go to recognises a second copy)."""
        started = time.perf_counter()
        await asyncio.gather(self._dead_letters(results), self._forward(results))
        rows = [row for _, r in results for row in r.rows]
        blocks = [r.block for _, r in results if r.block is not None]
        failpoints.hit("worker.before_insert")
        await self.sink.write(
            rows,
            {tp.partition: (r.epoch, r.last_offset + 1, r.last_crc) for tp, r in results},
            blocks,
            [row for _, r in results for row in r.reservations],
        )
        failpoints.hit("worker.after_insert")
        self._time("store", started)

    async def _complete(self) -> None:
        """Wait for the insert under way, then fold its batches into the state, publish the
        sessions they opened or closed, and commit their offsets (informational)."""
        if self._inflight is None:
            return
        assert self._consumer is not None
        results, task = self._inflight
        await task
        self._inflight = None
        self._marks_due = True
        started = time.perf_counter()
        for tp, result in results:
            changed = apply(self.states[tp.partition], result)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "partition %d applied through offset %d: %d rows, %d duplicates, changed %s",
                    tp.partition,
                    result.last_offset,
                    result.stored,
                    result.duplicates,
                    {k: v for k, v in changed.items() if k[1] == "tokens"},
                )
            # The batch's meters went out when it was prepared (_count_early): publishing
            # them now could move a key back behind a batch prepared since. Sessions remain.
            sessions = {k: v for k, v in changed.items() if k not in result.deltas}
            if self.hand_over is not None and sessions:
                self.hand_over(sessions, int(time.time() * 1000))
            await self._publish(sessions)
            self.processed += result.stored
            self.duplicates += result.duplicates
            metrics.batch_done(result.types, result.duplicates, result.ends)
        # Waiting for the broker to acknowledge them and to take the offsets (informational:
        # the stored marks are what a restart reads) happens behind the loop, one at a time.
        await self._committed()
        offsets = {tp: OffsetAndMetadata(r.last_offset + 1, "") for tp, r in results}
        self._committing = asyncio.create_task(self._commit(offsets))
        self._time("publish", started)

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self._consumer is not None
        await self._flush_producer()
        failpoints.hit("worker.after_publish")
        # Bounded: the offsets are informational, and a broker that lost the topic would
        # have the commit retried for ever, holding up the loop that notices it.
        await asyncio.wait_for(self._consumer.commit(offsets), COMMIT_TIMEOUT_S)

    async def _committed(self) -> None:
        """Wait for the last commit (and the publications before it) to finish. The offsets
        are informational, so a commit that failed (the group rebalanced meanwhile, say) is
        logged and the worker goes on."""
        task = self._committing
        if task is not None:
            try:
                await task
            except Exception as exc:
                log.warning("offset commit failed (informational; stored marks count): %r", exc)
            finally:
                if task.done():  # not when only this wait was cancelled: stop() waits again
                    self._committing = None

    def _time(self, phase: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.timings[phase] = self.timings.get(phase, 0.0) + elapsed
        metrics.batch_seconds.labels(phase).observe(elapsed)
