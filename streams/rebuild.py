"""The worker's rebuild: the partitions it gains are built from the store before their first
fetch (counters, sessions, dedup window, stored marks), and those it loses are dropped once
what is prepared is stored. Kafka's committed offsets are only informational: a partition is
read on from its stored mark (`streams.worker`)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from streams.assignor import CountingAssignor
from streams.batch import PartitionState
from streams.marks import GAPS_KEPT
from streams.pipeline import StorePipeline
from tally.config import EVENTS_TOPIC

log = logging.getLogger("tally.worker")


class Rebuild(StorePipeline):
    """Gaining and losing partitions (attributes: set by `Worker.__init__`)."""

    sole: bool
    partitions: int
    ready: asyncio.Event
    _lock: asyncio.Lock
    _assignor: CountingAssignor
    _closed: frozenset[str]

    async def acquire(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            await self._settle_or_drop()
            self.partitions = self._partition_count(assigned)
            await self._rebuild(assigned)
            self.ready.set()

    async def _rebuild(self, partitions: set[TopicPartition]) -> None:
        """Build each partition's state from the store and read on from its stored mark. A
        partition is owned only with its state: loading waits out a store outage, and the
        counters' republication (for a counters topic that came back empty) is best effort,
        since the topic holds them already unless the broker lost it."""
        assert self._consumer is not None
        await self._learn_cluster()
        for tp in sorted(partitions):
            state = await self._load(tp.partition, self.partitions)
            epoch = self._epoch()
            if self._embedded and state.epoch != epoch:
                # Its stored marks are offsets in another embedded broker's log (one that
                # restarted empty since): this broker's log is read from its start.
                state.epoch, state.next_offset, state.check = epoch, 0, None
            state.closed = self._closed
            self.states[tp.partition] = state
            self._holes.forget(tp.partition)
            self._marks.forget(tp.partition)
            self._marks.add_gaps(
                tp.partition, await self.sink.gaps(state.epoch, tp.partition, GAPS_KEPT)
            )
            # Read the message before the mark again, to check it is the same log.
            self._consumer.seek(tp, state.check[0] if state.check else state.next_offset)
            log.info(
                "partition %d of %d acquired at offset %d with %d counters",
                tp.partition,
                self.partitions,
                state.next_offset,
                len(state.counters),
                extra={"partition": tp.partition, "offset": state.next_offset},
            )
        try:
            for tp in sorted(partitions):
                await self._publish(self.states[tp.partition].counters)
            await self._flush_producer()
        except Exception as exc:
            log.warning("could not republish the counters of partitions acquired: %r", exc)

    def _partition_count(self, assigned: set[TopicPartition]) -> int:
        """usage.events' partition count for this generation: the group leader's, the same for
        every member (`streams.assignor`), or all of them for a sole worker; without it (a
        group still speaking plain roundrobin during a rolling upgrade) this member's own
        metadata."""
        assert self._consumer is not None
        if self.sole:  # every partition, by assignment
            return len(assigned)
        count = self._assignor.take(EVENTS_TOPIC)
        if count is None:
            known = self._consumer.partitions_for_topic(EVENTS_TOPIC) or ()
            count = max([len(known), *(tp.partition + 1 for tp in assigned)])
            log.warning(
                "the group assignment carries no partition count: using this worker's"
                " metadata (%d partitions); upgrade every worker to agree on it",
                count,
            )
        return count

    async def _load(self, partition: int, partitions: int) -> PartitionState:
        """Load a gained partition's state, waiting out a store outage: a partition must
        never be owned without its state."""
        delay = 0.1
        while True:
            try:
                return await self.sink.load(partition, partitions)
            except Exception as exc:
                log.warning(
                    "partition %d: cannot load its state (%s); retrying in %.1fs",
                    partition,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def release(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            await self._settle_or_drop()
            for tp in revoked:
                self.states.pop(tp.partition, None)
