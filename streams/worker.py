"""The batch consumer at the heart of the worker.

It consumes `usage.events` as a member of the worker group, a whole fetch at a time, and for
each fetch: the counters it changes, as absolute values on `usage.counters` (quota reads see
them at once); dead letters (so none is lost); one insert of the rows with their offsets;
then the batch is folded into the partition state and its open sessions published.
On assignment it rebuilds each partition's state from the store and seeks to the stored
watermark; Kafka's committed offsets are only informational (they show lag). The state of a
partition is that of the orgs mapping to it under the partition count the group leader
assigned from (`streams.assignor`); an event of another org is forwarded to its partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import OffsetAndMetadata

from schemas.prices import PriceBook
from streams import columns
from streams.assignor import CountingAssignor
from streams.batch import BatchResult, PartitionState, apply, projected
from streams.holes import HOLE_WAIT_S, HoleCheck
from streams.marks import GAPS_KEPT, MarksPublisher
from streams.sessions import LeaseKeeper
from streams.sink import ClickHouseSink
from tally import failpoints, metrics
from tally.broker import is_embedded_cluster
from tally.config import COUNTERS_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, Settings
from tally.domain.counters import HEARTBEAT_KEY, CounterKey, encode_key
from tally.domain.partitioning import key_partition
from tally.domain.pricing import Pricer
from tally.kafka_clients import cluster_id, stop_client
from tally.topics import ensure_topics

log = logging.getLogger("tally.worker")


Prepared = list[tuple[TopicPartition, BatchResult]]
STOP_DRAIN_S = 30.0
CLOSE_TIMEOUT_S = 10.0
STORE_POLL_MS = 5
PUBLISH_EVERY_S = 0.05
# A publication costs per key sent: a few changed keys go at once, more wait for the next
# PUBLISH_EVERY_S (under load a key changes in every fetch: only its latest value matters).
PUBLISH_AT_ONCE_KEYS = 16
STORE_EVERY_S = 0.25
COMMIT_TIMEOUT_S = 5.0
TOPICS_CHECK_S = 0.5
# After a fault in the loop, wait this long before rebuilding, doubling up to the max for
# faults in a row; a fault more than FAULT_RESET_S after the last starts over.
FAULT_BACKOFF_S = 0.5
FAULT_BACKOFF_MAX_S = 10.0
FAULT_RESET_S = 60.0
# On the embedded broker a hole usually fills within one re-read (another producer's batch
# still being written); one that stays this long is a batch the broker lost (seen: a whole
# batch of ~820 records after a restart under load). It is passed as a gap, stored and
# published with the stored marks, so producers send again what they had in it.
EMBEDDED_HOLE_WAIT_S = 2.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.acquire(assigned)


class Worker:
    """Consume, store and count; use `async with Worker(...)` or `start()` / `stop()`."""

    def __init__(self, settings: Settings, sink: ClickHouseSink, book: PriceBook) -> None:
        self.settings = settings
        self.sink = sink
        self.pricer = Pricer(book)
        self.states: dict[int, PartitionState] = {}
        self.partitions = 0  # usage.events' partition count the owned states are built for
        self.processed = 0
        self.dead_letters = 0
        self.forwarded = 0
        self.duplicates = 0
        self.faults = 0  # faults the loop recovered from (see _run)
        self.timings: dict[str, float] = {}  # seconds spent per phase of a batch
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._topics_task: asyncio.Task[None] | None = None
        self._assignor = CountingAssignor()
        self._holes = HoleCheck()
        self._marks = MarksPublisher()
        self._leases = LeaseKeeper(settings.session_lease_s, settings.event_time)
        self._embedded = False  # the broker is an embedded one (`tally.broker`)
        self._marks_due = False  # a batch was stored since the last stored marks
        self._hole_logged = 0.0
        # The batches being stored, and those prepared (and published) since, to store next.
        self._inflight: tuple[Prepared, asyncio.Task[None]] | None = None
        self._queued: Prepared = []
        # Counters of prepared batches not yet sent, the latest value per key.
        self._early: dict[CounterKey, int] = {}
        self._sent_early_at = 0.0
        self._stored_at = 0.0
        self._committing: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        # Where counters go at once, besides the counters topic, when the API's counter table
        # is in this process (`tally up`): called with the values and the time in ms they
        # are current to, as each fetch is prepared (see CounterTable.hand_over).
        self.hand_over: Callable[[dict[CounterKey, int], int], None] | None = None

    async def start(self) -> None:
        s = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            linger_ms=2,
            max_batch_size=1 << 20,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=min(1_000, s.session_timeout_ms // 3),
            rebalance_timeout_ms=s.session_timeout_ms,
            max_poll_interval_ms=300_000,
            fetch_max_bytes=64 << 20,
            fetch_max_wait_ms=20,  # the broker may hold an empty fetch this long
            max_partition_fetch_bytes=8 << 20,
            partition_assignment_strategy=(self._assignor, RoundRobinPartitionAssignor),
        )
        self._consumer.subscribe([EVENTS_TOPIC], listener=_Rebalance(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="tally-worker")
        self._topics_task = asyncio.create_task(self._keep_topics(), name="tally-worker-topics")

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

    async def stop(self) -> None:
        """Finish the batch in flight, then leave the group and close the connections."""
        if self._topics_task is not None:
            self._topics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._topics_task
            self._topics_task = None
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight is not None or self._queued:
            # Store what is prepared; if the store does not come back in time, leave it: its
            # events are read again after the restart and counted once.
            try:
                async with self._lock:
                    await asyncio.wait_for(self._settle(), STOP_DRAIN_S)
            except TimeoutError:
                log.warning("store unavailable at shutdown: the last batches will be replayed")
                if self._inflight is not None:
                    self._inflight[1].cancel()
                self._inflight, self._queued = None, []
        if self._committing is not None:
            try:
                await asyncio.wait_for(self._committed(), STOP_DRAIN_S)
            except Exception as exc:  # informational offsets: the stored marks count
                log.warning("last offset commit did not finish at shutdown: %r", exc)
        if self._consumer is not None:
            await stop_client(self._consumer, CLOSE_TIMEOUT_S)
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- rebalance -------------------------------------------------------------------------

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

    def _partition_count(self, assigned: set[TopicPartition]) -> int:
        """usage.events' partition count for this generation: the group leader's, the same for
        every member (`streams.assignor`); without it (a group still speaking plain
        roundrobin during a rolling upgrade) this member's own metadata."""
        assert self._consumer is not None
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

    async def release(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            await self._settle_or_drop()
            for tp in revoked:
                self.states.pop(tp.partition, None)

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

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        """The loop, kept alive: a fault in it (a broker or store error that outlasted the
        clients' own retries) is logged, and the owned partitions are rebuilt from the store
        and read again from their stored marks, as a restart would, so nothing prepared and
        not stored is lost or counted twice."""
        delay, failed_at = FAULT_BACKOFF_S, None
        while True:
            try:
                if failed_at is not None:
                    async with self._lock:
                        await self._drop_prepared()
                        await self._committed()
                        await self._rebuild({TopicPartition(EVENTS_TOPIC, p) for p in self.states})
                await self._loop()
            except Exception:
                if failed_at is not None and time.monotonic() - failed_at > FAULT_RESET_S:
                    delay = FAULT_BACKOFF_S  # a fault long after the last: start over
                self.faults += 1
                metrics.worker_faults.inc()
                log.exception(
                    "the worker loop failed; rebuilding its partitions from the store in %.1fs",
                    delay,
                )
                await asyncio.sleep(delay)
                failed_at, delay = time.monotonic(), min(delay * 2, FAULT_BACKOFF_MAX_S)

    async def _loop(self) -> None:
        assert self._consumer is not None
        s = self.settings
        last_forget = last_beat = last_report = time.monotonic()
        reported = -1
        while True:
            # While a store is under way, look back at it often (STORE_POLL_MS).
            fetched = await self._consumer.getmany(
                timeout_ms=STORE_POLL_MS
                if self._inflight or self._queued or self._early
                else s.batch_timeout_ms,
                max_records=s.batch_max_records,
            )
            async with self._lock:
                batch = {tp: msgs for tp, msgs in fetched.items() if tp.partition in self.states}
                # Each fetch is prepared and its counters published at once; the store works
                # in the background on what was prepared before, and everything prepared
                # meanwhile goes into its next insert, so a slow insert makes bigger inserts
                # and never holds back what quota reads see.
                prepared = await self._prepare(batch) if batch else []
                if prepared:
                    self._queued.extend(prepared)
                else:
                    await self._check_logs()
                await self._publish_early()
                if self._inflight is not None and (
                    self._inflight[1].done() or self._backlog() >= s.batch_max_records * 4
                ):
                    await self._complete()
                if self._inflight is None and self._due():
                    self._start_store()
                if time.monotonic() - last_beat >= 0.5:
                    await self._heartbeat()
                    last_beat = time.monotonic()
                    self._marks_due = True
                if self._marks_due:
                    await self._publish_marks()
                await self._leases.write(self._producer, self.states, self._lag)
                if time.monotonic() - last_report >= 10 and self.processed != reported:
                    marks = {p: st.next_offset for p, st in sorted(self.states.items())}
                    log.info(
                        "stored %d events (%d duplicates, %d dead letters); next offsets %s",
                        self.processed,
                        self.duplicates,
                        self.dead_letters,
                        marks,
                        extra={"processed": self.processed},
                    )
                    reported, last_report = self.processed, time.monotonic()
                if time.monotonic() - last_forget > 60:
                    now = datetime.now(UTC)
                    for state in self.states.values():
                        state.expire(now, s.dedup_window_s)
                    last_forget = time.monotonic()

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

    def _lag(self, partition: int) -> int | None:
        """Records of a partition's log not yet read (None: not known yet)."""
        assert self._consumer is not None
        high = self._consumer.highwater(TopicPartition(EVENTS_TOPIC, partition))
        return None if high is None else max(0, high - self._read_to(partition))

    def _backlog(self) -> int:
        """Rows prepared and waiting for the insert after the one under way; at four fetches'
        worth the loop waits for the store (a bound on memory while the store is slow)."""
        return sum(r.stored for _, r in self._queued)

    def _due(self) -> bool:
        """Insert a fetch's worth at once, or what there is every STORE_EVERY_S: the counters
        are out already, and each insert costs the store a part to write and merge."""
        return bool(self._queued) and (
            self._backlog() >= self.settings.batch_max_records
            or time.monotonic() - self._stored_at >= STORE_EVERY_S
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

    async def _prepare(self, fetched: dict[TopicPartition, list]) -> Prepared:  # type: ignore[type-arg]
        """Decode, dedup, price and aggregate a fetch, per partition (pure work)."""
        assert self._consumer is not None
        for tp, msgs in fetched.items():
            state = self.states[tp.partition]
            high = self._consumer.highwater(tp)
            # The log ends before our mark, or the message before the mark is another one:
            # an empty broker came back. Count its log anew.
            read_to = self._read_to(tp.partition)
            new_log = (
                high is not None and high < read_to and await self._log_ends_before(tp, read_to)
            )
            if state.check and msgs and not new_log:
                at, crc = state.check
                before = next((m for m in msgs if m.offset == at), None)
                if before is not None:
                    new_log = zlib.crc32(before.value or b"") != crc
                    state.check = None
                elif msgs[0].offset > at:
                    # The message before the mark did not come back (a fetch from before
                    # our seek): nothing to compare, so no verdict.
                    state.check = None
            if new_log:
                await self._settle()
                await self._log_reset(_new_log(tp.partition, msgs[0].offset, read_to), tp.partition)
                return []
        now = datetime.now(UTC)
        results: Prepared = []
        for tp, msgs in fetched.items():
            state = self.states[tp.partition]
            before = self._unapplied(tp.partition)
            first = self._read_to(tp.partition, before)
            # A fetch may start at the first offset of the record batch holding our mark.
            from_first = msgs if msgs[0].offset >= first else [m for m in msgs if m.offset >= first]
            records = await self._without_holes(tp, state, first, from_first)
            if records:
                started = time.perf_counter()
                result = columns.process(
                    state, records, self.pricer, now, state.epoch, before, self.settings.event_time
                )
                self._time("process", started)
                results.append((tp, result))
                self._count_early(state, result, before)
                # Let the fetcher ask for the partition's next records, and quota reads run,
                # before the next partition's work.
                await asyncio.sleep(0)
        return results

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

    async def _dead_letters(self, results: list[tuple[TopicPartition, BatchResult]]) -> None:
        assert self._producer is not None
        futures = []
        for _, result in results:
            for dead in result.dead:
                headers = [
                    ("error", dead.error.encode()),
                    ("source", f"{EVENTS_TOPIC}/{dead.partition}/{dead.offset}".encode()),
                ]
                value = orjson.dumps(
                    {
                        "error": dead.error,
                        "partition": dead.partition,
                        "offset": dead.offset,
                        "value": dead.value.decode("utf-8", "backslashreplace"),
                    }
                )
                futures.append(await self._producer.send(DLQ_TOPIC, value, headers=headers))
                self.dead_letters += 1
                metrics.dead_letter(dead.error)
                log.warning(
                    "dead letter: %s",
                    dead.error,
                    extra={"partition": dead.partition, "offset": dead.offset},
                )
        if futures:
            await asyncio.gather(*futures)

    async def _forward(self, results: list[tuple[TopicPartition, BatchResult]]) -> None:
        """Send each event that arrived on a partition its org does not map to on to the one
        it maps to, keyed by its org_id."""
        assert self._producer is not None
        futures = []
        for tp, result in results:
            if not result.forwards:
                continue
            for f in result.forwards:
                await self._until_known(f.partition)
                futures.append(
                    await self._producer.send(
                        EVENTS_TOPIC,
                        f.value,
                        key=f.org_id.encode(),
                        partition=f.partition,
                        headers=list(f.headers),
                    )
                )
            self.forwarded += len(result.forwards)
            metrics.forwarded.inc(len(result.forwards))
            first = result.forwards[0]
            log.warning(
                "partition %d: forwarded %d events whose org_id maps to another partition of"
                " %d (org %r to partition %d, offset %d); producers must key by org_id with"
                " Kafka's default (murmur2) partitioner",
                tp.partition,
                len(result.forwards),
                self.partitions,
                first.org_id,
                first.partition,
                first.offset,
                extra={"partition": tp.partition, "offset": first.offset},
            )
        if futures:
            await asyncio.gather(*futures)

    async def _until_known(self, partition: int) -> None:
        """Wait until the producer's metadata knows a partition the group leader assigned
        from (it may be older than the leader's just after an increase)."""
        assert self._producer is not None
        delay = 0.1
        while partition not in (await self._producer.partitions_for(EVENTS_TOPIC)):
            log.warning("partition %d is not in the producer's metadata yet; refreshing", partition)
            await self._producer.client.force_metadata_update()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _publish(self, values: dict[CounterKey, int]) -> None:
        """Send absolute counter values: republishing one is always harmless. They go out as
        one record batch per partition of the topic, each message to the partition a keyed
        send would pick (so a key's values stay in order on one partition)."""
        producer = self._producer
        assert producer is not None
        if not values:
            return
        partitions = len(await producer.partitions_for(COUNTERS_TOPIC))
        at = int(time.time() * 1000)
        batches: dict[int, BatchBuilder] = {}
        for counter, value in values.items():
            key = encode_key(counter)
            message = orjson.dumps({"v": value, "t": at})
            partition = key_partition(key, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=message, timestamp=None) is None:  # full
                await producer.send_batch(batch, COUNTERS_TOPIC, partition=partition)
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=message, timestamp=None)
        for partition, batch in batches.items():
            await producer.send_batch(batch, COUNTERS_TOPIC, partition=partition)

    async def _heartbeat(self) -> None:
        """Per owned partition: the time the counters are current to and the lag behind it."""
        assert self._producer is not None and self._consumer is not None
        at = int(time.time() * 1000)
        lags = {}
        for partition in self.states:
            tp = TopicPartition(EVENTS_TOPIC, partition)
            high = self._consumer.highwater(tp)
            lag = max(0, high - self.states[partition].next_offset) if high is not None else 0
            lags[partition] = lag
            beat = encode_key((HEARTBEAT_KEY, str(partition), 0))
            await self._producer.send(COUNTERS_TOPIC, orjson.dumps({"v": lag, "t": at}), key=beat)
        metrics.partition_lag(lags)

    async def _flush_producer(self) -> None:
        assert self._producer is not None
        await self._producer.flush()


def _new_log(partition: int, found: int, mark: int) -> str:
    return (
        f"partition {partition}: the broker's log (offset {found}) is not the one of the stored"
        f" mark {mark}"
    )
