"""Which log the worker reads: the broker's cluster id, the log epoch named by it, a log
reset when the broker turns out to be a new one, the stored marks producers wait for, the
topics made again on a broker that restarted empty, and holes in a partition's offsets.
Mixed into `streams.worker.Worker`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import TopicPartition

from streams.batch import BatchResult, PartitionState
from streams.holes import HOLE_WAIT_S, HoleCheck
from streams.marks import MarksPublisher
from streams.publications import Publications
from streams.sink import ClickHouseSink
from tally import metrics
from tally.broker import is_embedded_cluster
from tally.config import EVENTS_TOPIC
from tally.kafka_clients import cluster_id
from tally.topics import ensure_topics

log = logging.getLogger("tally.worker")

TOPICS_CHECK_S = 0.5
# On the embedded broker a hole usually fills within one re-read (another producer's batch
# still being written); one that stays this long is a batch the broker lost (seen: a whole
# batch of ~820 records after a restart under load). It is passed as a gap, stored and
# published with the stored marks, so producers send again what they had in it.
EMBEDDED_HOLE_WAIT_S = 2.0


class LogWatch(Publications):
    """The log identity and its checks (attributes: set by `Worker.__init__`)."""

    sink: ClickHouseSink
    _holes: HoleCheck
    _marks: MarksPublisher
    _embedded: bool
    _marks_due: bool
    _hole_logged: float

    def _read_to(self, partition: int, unapplied: list[BatchResult] | None = None) -> int:
        raise NotImplementedError

    async def _settle(self) -> None:
        raise NotImplementedError

    async def _keep_topics(self) -> None:
        """Create Tally's topics again on a broker that restarted empty (a new cluster id),
        apart from the loop: the loop's own publications wait for those topics, and
        producers wait for usage.events rather than let a produce create it."""
        assert self._producer is not None and self.settings.bootstrap_servers is not None
        seen = None
        while True:
            await asyncio.sleep(TOPICS_CHECK_S)
            try:
                cluster = await cluster_id(self._producer.client)
                if seen is not None and cluster != seen:
                    partitions = self.partitions or self.settings.partitions
                    await ensure_topics(self.settings.bootstrap_servers, partitions)
                seen = cluster
            except Exception as exc:  # the broker is away: look again
                log.debug("cannot check the broker's topics: %r", exc)

    async def _learn_cluster(self) -> None:
        """The cluster id of the log read from now on: stored marks are tagged with it, an
        embedded broker's epoch is named by it, and holes are waited on longer there
        (`streams.holes`)."""
        assert self._producer is not None
        cluster = await self._marks.learn(self._producer)
        self._embedded = is_embedded_cluster(cluster)
        self._holes.wait_s = EMBEDDED_HOLE_WAIT_S if self._embedded else HOLE_WAIT_S

    def _epoch(self) -> str:
        """The epoch of the log read now: on an embedded broker, named by its cluster id
        (a broker restarted empty is a new one); on Kafka, the configured one."""
        if self._embedded and self._marks.cluster is not None:
            return self.sink.epoch_for(self._marks.cluster)
        return self.sink.base_epoch

    async def _log_reset(self, why: str, partition: int | None = None) -> None:
        """The broker's log is not the one of the stored marks: read it from its start.

        Every owned partition moves to a new log epoch at offset 0; counters and the dedup
        window stay, so events already counted are recognised by their event_id.
        """
        assert self._consumer is not None
        await self._learn_cluster()
        epoch = self._epoch()
        if not self._embedded or any(st.epoch == epoch for st in self.states.values()):
            epoch = self.sink.new_epoch()  # no cluster id tells this log from the last
        log.warning(
            "%s; reading the new log from its start under epoch %s",
            why,
            epoch,
            extra={"partition": partition},
        )
        for p, state in self.states.items():
            state.next_offset = 0
            state.epoch = epoch
            state.check = None
            self._holes.forget(p)
            self._marks.forget(p)
            self._consumer.seek(TopicPartition(EVENTS_TOPIC, p), 0)
            await self._publish(state.counters)  # the new broker's counters topic is empty
        await self._flush_producer()

    async def _publish_marks(self) -> None:
        """Tell producers how far each partition is stored (`streams.marks`); if the broker
        turned out to be a new log, store what is prepared and read the new one."""
        assert self._producer is not None
        self._marks_due = False
        other = await self._marks.publish(self._producer, self.states)
        if other is not None:
            await self._settle()
            await self._log_reset(
                f"the broker is a new log (cluster {other}, was {self._marks.cluster})"
            )

    async def _check_logs(self) -> None:
        """An owned partition whose log ends before our mark belongs to an empty broker that
        came back (it answers our fetches with nothing): read that log from its start."""
        assert self._consumer is not None
        for partition in list(self.states):
            tp = TopicPartition(EVENTS_TOPIC, partition)
            high = self._consumer.highwater(tp)
            read_to = self._read_to(partition)
            if high is not None and high < read_to and await self._log_ends_before(tp, read_to):
                await self._settle()
                await self._log_reset(_new_log(partition, high, read_to), partition)
                return

    async def _log_ends_before(self, tp: TopicPartition, offset: int) -> bool:
        """Whether the broker's log of a partition ends before `offset` (a broker that lost
        its log), asked afresh. Not on an embedded broker: there a new log has a new cluster
        id (`_publish_marks` notices it), while the ends it reports can lag the records it
        served for good (seen after a restart under load: 2977 reported, 3146 read), and a
        reset on them reads the log from its start again and again."""
        assert self._consumer is not None
        if self._embedded:
            return False
        try:
            end = (await self._consumer.end_offsets([tp]))[tp]
        except Exception as exc:  # the broker is away: no verdict yet
            log.debug("partition %d: cannot ask where its log ends: %r", tp.partition, exc)
            return False
        return int(end) < offset

    async def _without_holes(
        self,
        tp: TopicPartition,
        state: PartitionState,
        first: int,
        records: list,  # type: ignore[type-arg]
    ) -> Sequence:  # type: ignore[type-arg]
        """The records up to a hole in their offsets, which is read again (`streams.holes`).
        A hole passed as a gap is stored first, then published with the stored marks."""
        assert self._consumer is not None
        taken = self._holes.take(tp.partition, first, records, time.monotonic())
        if taken.gaps:
            await self.sink.write_gaps(state.epoch, tp.partition, taken.gaps)
            self._marks.add_gaps(tp.partition, taken.gaps)
        for gap_from, gap_to in taken.gaps:
            metrics.offset_gaps.inc()
            log.warning(
                "partition %d: offsets %d to %d are not in the log (read %d times over %.1fs);"
                " going on after them",
                tp.partition,
                gap_from,
                gap_to,
                self._holes.reads,
                self._holes.wait_s,
                extra={"partition": tp.partition, "offset": gap_from},
            )
        if taken.reread_from is not None:
            self._consumer.seek(tp, taken.reread_from)
        now = time.monotonic()
        metrics.offset_hole_wait.set(self._holes.waiting(now))
        hole = self._holes.hole(tp.partition)
        if hole is not None and now - hole[2] >= 1.0 and now - self._hole_logged >= 10.0:
            self._hole_logged = now
            log.warning(
                "partition %d: offset %d has been missing from the broker's log for %.1fs while"
                " later ones are there; reading it again until it fills, or passing it as a gap"
                " after %.1fs",
                tp.partition,
                hole[0],
                now - hole[2],
                self._holes.wait_s,
                extra={"partition": tp.partition, "offset": hole[0]},
            )
        return taken.records


def _new_log(partition: int, found: int, mark: int) -> str:
    return (
        f"partition {partition}: the broker's log (offset {found}) is not the one of the stored"
        f" mark {mark}"
    )
