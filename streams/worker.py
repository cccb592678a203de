"""The batch consumer at the heart of the worker.

It consumes `usage.events` as a member of the worker group (or, the sole worker of a
`tally up`'s own broker, every partition by assignment, without waiting for a group to
form), a whole fetch at a time, and for each fetch: the counters it changes, as absolute
values on `usage.counters` (quota reads see them at once); dead letters (so none is lost);
one insert of the rows with their offsets; then the batch is folded into the partition
state and its open sessions published.
On assignment it rebuilds each partition's state from the store and seeks to the stored
watermark; Kafka's committed offsets are only informational (they show lag). The state of a
partition is that of the orgs mapping to it under the partition count the group leader
assigned from (`streams.assignor`); an event of another org is forwarded to its partition.

The worker's rooms: this module holds its lifecycle and the consumption loop;
`streams.rebuild` the partitions gained and lost (rebuilt from the store),
`streams.pipeline` the store pipeline, `streams.logwatch` which log it reads (cluster id,
epochs, stored marks, holes) and `streams.publications` what it sends besides the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from schemas.prices import PriceBook
from streams import admissions, columns
from streams.assignor import CountingAssignor
from streams.batch import PartitionState
from streams.holes import HoleCheck
from streams.logwatch import _new_log
from streams.marks import MarksPublisher
from streams.pipeline import Prepared
from streams.rebuild import Rebuild
from streams.sessions import LeaseKeeper
from streams.sink import ClickHouseSink
from tally import metrics
from tally.broker import is_sole_cluster
from tally.config import EVENTS_TOPIC, Settings
from tally.domain.counters import CounterKey
from tally.domain.pricing import Pricer
from tally.kafka_clients import FetchPace, cluster_id, stop_client
from tally.store import purge as closure_sql

log = logging.getLogger("tally.worker")


STOP_DRAIN_S = 30.0
CLOSE_TIMEOUT_S = 10.0
STORE_POLL_MS = 5
# How long the broker may hold an empty fetch (`FetchPace`): short while events flow (quota
# reads follow within milliseconds), longer once none came for IDLE_AFTER_S. The first
# events after a quiet spell wait up to IDLE_FETCH_WAIT_MS more.
BUSY_FETCH_WAIT_MS = 20
IDLE_FETCH_WAIT_MS = 100
IDLE_AFTER_S = 1.0
# After a fault in the loop, wait this long before rebuilding, doubling up to the max for
# faults in a row; a fault more than FAULT_RESET_S after the last starts over.
FAULT_BACKOFF_S = 0.5
FAULT_BACKOFF_MAX_S = 10.0
FAULT_RESET_S = 60.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.acquire(assigned)


class Worker(Rebuild):
    """Consume, store and count; use `async with Worker(...)` or `start()` / `stop()`."""

    def __init__(
        self, settings: Settings, sink: ClickHouseSink, book: PriceBook, sole: bool = False
    ) -> None:
        self.settings = settings
        # The only worker of its broker's log (`tally up` and its embedded broker): it takes
        # every partition at once instead of waiting for a consumer group to form.
        self.sole = sole
        self.sink = sink
        self.pricer = Pricer(book)
        self.states: dict[int, PartitionState] = {}
        self._closed: frozenset[str] = frozenset()  # closed orgs, read every few seconds
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
        # The closed orgs as the API's registry knows them, when it is in this process.
        self.closed_orgs: Callable[[], frozenset[str]] | None = None

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
            fetch_max_wait_ms=BUSY_FETCH_WAIT_MS,  # the broker may hold an empty fetch this long
            max_partition_fetch_bytes=8 << 20,
            partition_assignment_strategy=(self._assignor, RoundRobinPartitionAssignor),
        )
        cluster = await cluster_id(self._producer.client)
        if not self.sole:
            if is_sole_cluster(cluster):
                raise RuntimeError(
                    f"the broker at {s.bootstrap_servers} belongs to a `tally up`, whose worker"
                    " reads every partition: start more workers against Kafka or `tally broker`"
                )
            self._consumer.subscribe([EVENTS_TOPIC], listener=_Rebalance(self))
        await self._consumer.start()
        if self.sole:
            count = len(await self._producer.partitions_for(EVENTS_TOPIC))
            self._consumer.assign([TopicPartition(EVENTS_TOPIC, p) for p in range(count)])
        self._task = asyncio.create_task(self._run(), name="tally-worker")
        self._topics_task = asyncio.create_task(self._keep_topics(), name="tally-worker-topics")

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

    async def _run(self) -> None:
        """The loop, kept alive: a fault in it (a broker or store error that outlasted the
        clients' own retries) is logged, and the owned partitions are rebuilt from the store
        and read again from their stored marks, as a restart would, so nothing prepared and
        not stored is lost or counted twice."""
        delay, failed_at = FAULT_BACKOFF_S, None
        if self.sole:
            assert self._consumer is not None
            await self.acquire(self._consumer.assignment())
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
        last_forget = last_beat = last_report = last_closed = time.monotonic()
        pace = FetchPace(self._consumer, BUSY_FETCH_WAIT_MS, IDLE_FETCH_WAIT_MS, IDLE_AFTER_S)
        reported = -1
        while True:
            # While a store is under way, look back at it often (STORE_POLL_MS).
            fetched = await self._consumer.getmany(
                timeout_ms=STORE_POLL_MS
                if self._inflight or self._queued or self._early
                else s.batch_timeout_ms,
                max_records=s.batch_max_records,
            )
            pace.observe(bool(fetched))
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
                    await self._show_lapses()
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
                if time.monotonic() - last_closed >= s.registry_refresh_s:
                    await self._read_closed()
                    last_closed = time.monotonic()
                if time.monotonic() - last_forget > 60:
                    now = datetime.now(UTC)
                    for state in self.states.values():
                        state.expire(now, s.dedup_window_s)
                    last_forget = time.monotonic()

    async def _show_lapses(self) -> None:
        """Publish the reserved figures of orgs whose reservations lapsed."""
        if any(st.holds for st in self.states.values()):
            await self._publish(admissions.show_lapses(self.states.values(), datetime.now(UTC)))

    async def _read_closed(self) -> None:
        """Which orgs are closed, for every partition's state (their events are refused):
        from the API's registry when it is in this process (`closed_orgs`), else the store."""
        if self.closed_orgs is not None:
            closed = self._closed = self.closed_orgs()
        else:
            try:
                rows = await self.sink.store.query(*closure_sql.closed_query())
            except Exception as exc:  # the store may be down: keep the last set read
                log.warning("could not read the closed orgs: %s", exc)
                return
            closed = self._closed = frozenset(row[0] for row in rows)
        for state in self.states.values():
            state.closed = closed

    def _lag(self, partition: int) -> int | None:
        """Records of a partition's log not yet read (None: not known yet)."""
        assert self._consumer is not None
        high = self._consumer.highwater(TopicPartition(EVENTS_TOPIC, partition))
        return None if high is None else max(0, high - self._read_to(partition))

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
