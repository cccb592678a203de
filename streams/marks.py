"""The worker's stored marks on `usage.stored`: how far each owned partition is stored.

Producers keep each event the broker acknowledged until a mark of the same cluster passes
its offset (`schemas.marks`, `producers.delivery`), so a mark must never claim offsets of
one log under the cluster id of another. The cluster id is learned when the partitions are
built from the store, before their first fetch, and asked again before every publication:
if the broker answering now is another one (an embedded broker restarted empty), the
offsets belong to the old log and nothing is published; the worker reads the new log from
its start instead. A partition whose log is not yet checked (the message before its stored
mark not yet read back and compared) gets no mark either.

With each mark go the latest gaps the worker passed in that partition's log (offsets it
never read: `streams.holes`), loaded from the store with the partition: a producer whose
event the broker acknowledged in a gap sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer

from schemas.marks import STORED_TOPIC, StoredMarks, encode_marks
from streams.batch import PartitionState
from tally import metrics
from tally.kafka_clients import cluster_id

log = logging.getLogger("tally.worker")

GAPS_KEPT = 64  # per partition, the latest: a producer holds an event for seconds, not days


class MarksPublisher:
    """The cluster id the owned partitions' offsets belong to, and their publication."""

    def __init__(self) -> None:
        self.cluster: str | None = None
        self.gaps: dict[int, deque[tuple[int, int]]] = {}

    def add_gaps(self, partition: int, gaps: list[tuple[int, int]]) -> None:
        kept = self.gaps.get(partition)
        if kept is None:
            kept = self.gaps[partition] = deque(maxlen=GAPS_KEPT)
        kept.extend(gaps)

    def forget(self, partition: int) -> None:
        self.gaps.pop(partition, None)

    async def learn(self, producer: AIOKafkaProducer) -> str:
        """Ask the broker for its cluster id until it answers; the offsets read from now on
        are in its log."""
        delay = 0.1
        while True:
            try:
                self.cluster = await cluster_id(producer.client)
                return self.cluster
            except Exception as exc:
                log.warning("cannot learn the broker's cluster id (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def publish(
        self, producer: AIOKafkaProducer, states: Mapping[int, PartitionState]
    ) -> str | None:
        """Publish the stored marks of the partitions whose log is checked. Returns the
        cluster id of the broker now answering if it is another log than the one the marks
        are offsets in (nothing is published then), else None."""
        if self.cluster is None or not states:
            return None
        try:
            now = await cluster_id(producer.client)
        except Exception as exc:  # the broker is away: the next publication will say
            log.debug("stored marks not published: %r", exc)
            return None
        if now != self.cluster:
            return now
        marks = {p: s.next_offset for p, s in states.items() if s.check is None}
        if not marks:
            return None
        epoch = next(iter(states.values())).epoch
        gaps = {p: list(self.gaps[p]) for p in marks if self.gaps.get(p)}
        now_ms = int(time.time() * 1000)
        value = encode_marks(StoredMarks(self.cluster, epoch, now_ms, marks, gaps))
        await producer.send(STORED_TOPIC, value, partition=0)
        metrics.stored_marks.inc()
        return None
