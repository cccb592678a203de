"""The async emitter that agent runtimes embed: typed helpers in, events on `usage.events` out.

    async with Emitter("kafka:9092", spool_dir="/var/lib/agent/tally-spool") as tally:
        tally.llm_usage(org_id="acme", agent_id="a1", run_id="r1", model="gpt-4o",
                        input_tokens=1200, output_tokens=80)

How it keeps every event (see docs/events.md, "The emitter"):

- A helper builds and checks the event (raising `InvalidEvent` on a bad argument), encodes
  it and appends it to a bounded in-memory buffer. It never waits for the broker.
- One background task (the pump) sends the buffer to Kafka in chunks (acks="all", gzip,
  keyed by org_id) and waits for the acknowledgements of each chunk.
- Backpressure policy, "spool": when the buffer is full, or the broker is unreachable, or
  older events are still waiting on disk, the helper appends the event to the disk spool
  instead (a `write(2)`, fsynced in batches). The caller is never blocked by the broker;
  it gets `SpoolFull` only when the spool reached its size bound, and that event is
  counted as failed.
- When a chunk cannot be delivered, its unacknowledged events and the rest of the buffer go
  to the front of the spool (they are older than anything there), and the emitter
  reconnects with backoff. Once the broker is back (and has the topic), the spool is
  replayed in order, then the emitter returns to sending from memory.
- End-to-end acknowledgement (`confirm="stored"`, the default): an event is done when Tally
  has *stored* it, not when the broker acknowledged it; until then it is kept and, if the
  broker restarts empty, sent again (`producers.delivery`). `confirm="broker"` ends at
  the broker's acknowledgement, for a topic that no Tally worker reads.
- `flush()` returns when everything emitted before it was delivered or is durably spooled;
  `wait_delivered()` when nothing waits for the broker; `wait_stored()` when everything is
  stored. `close()` waits for that (up to `close_timeout_s`), then writes what is still
  unconfirmed to the spool. Events left on disk are delivered by the next emitter that
  opens the same spool directory, even in another process.

Delivery is at least once: a chunk that fails halfway is sent again, and Tally drops the
copies by `event_id`. Event ids are UUIDv7, so they also sort by emission time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer

from producers import build
from producers.confirm import Ticket, Unconfirmed
from producers.delivery import Delivery
from producers.helpers import TypedHelpers
from producers.marks import MarksReader
from producers.spool import Position, Record, Spool, SpoolFull
from schemas.events import Event, InvalidEvent, validate_event

log = logging.getLogger("tally.emitter")

EVENTS_TOPIC = "usage.events"
MAX_EVENT_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """What an emitter has done so far (cumulative counts, plus what is pending now)."""

    sent: int  # acknowledged by the broker
    spooled: int  # written to the disk spool (delivered later, then counted in `sent`)
    failed: int  # refused because the spool was full: these were not kept
    rejected: int  # refused as invalid (InvalidEvent raised to the caller)
    buffered: int  # in memory now
    spool_pending_bytes: int  # on disk now, not confirmed yet
    connected: bool
    unconfirmed: int = 0  # acknowledged by the broker, not yet confirmed as stored
    confirmed: int = 0  # confirmed as stored by Tally (a copy sent again counts again)
    resent: int = 0  # sent again because the broker that took them restarted empty
    rewrites: int = 0  # times a broker acknowledged an offset twice (it rewrote its log)


class Emitter(TypedHelpers, Delivery):
    """Send usage events to Kafka without losing any; use `async with` or start/close.

    `spool_dir` is required: it is where undelivered events wait. Give each emitter (each
    process) its own directory; a second emitter on the same one gets `SpoolLocked`.

    Bounds: `buffer_events` in memory waiting to be sent, `unconfirmed_max_events` sent and
    not yet confirmed as stored (beyond it new events wait in the buffer, then the spool),
    `spool_max_bytes` on disk; past all three a helper raises `SpoolFull`.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        spool_dir: str | Path,
        topic: str = EVENTS_TOPIC,
        buffer_events: int = 10_000,
        batch_events: int = 5_000,
        linger_ms: int = 5,
        compression: str | None = "gzip",
        delivery_timeout_ms: int = 10_000,
        spool_max_bytes: int = 1 << 30,
        fsync_interval_ms: int = 50,
        reconnect_backoff_ms: tuple[int, int] = (200, 5_000),
        client_id: str = "tally-emitter",
        confirm: Literal["stored", "broker"] = "stored",
        unconfirmed_max_events: int = 100_000,
        close_timeout_s: float = 10.0,
    ) -> None:
        if confirm not in ("stored", "broker"):
            raise ValueError('confirm must be "stored" or "broker"')
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.buffer_events = buffer_events
        self.batch_events = batch_events
        self.linger_ms = linger_ms
        self.compression = compression
        self.delivery_timeout_ms = delivery_timeout_ms
        self.fsync_interval = fsync_interval_ms / 1000
        self.backoff_min, self.backoff_max = (b / 1000 for b in reconnect_backoff_ms)
        self.client_id = client_id
        self.confirm = confirm
        self.unconfirmed_max_events = unconfirmed_max_events
        self.close_timeout_s = close_timeout_s
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes)

        self._lock = threading.Lock()
        self._buffer: deque[Record] = deque()
        self._inflight = 0
        self._spooling = False  # new events must go to the spool (keeps the order)
        self._idle = False
        self._enqueued = 0  # events that entered the buffer
        self._left = 0  # of those, how many left memory (delivered or spooled), in order
        self._sent = self._spooled = self._failed = self._rejected = 0
        self._confirmed = self._resent = self._rewrites = 0
        self._unconfirmed = Unconfirmed()
        self._cluster: str | None = None  # the broker's cluster id, as last verified
        self._verifying = 0  # acknowledged, waiting for the cluster id that says where to
        self._replay_from: Position | None = None  # the spool is read ahead to here
        self._replayed: deque[tuple[Ticket, Position]] = deque()  # read, not yet confirmed
        self._replay_generation = 0  # moves when the replay starts over from the cursor
        self._waiters: dict[Ticket, asyncio.Future[bool]] = {}
        self._marks: MarksReader | None = None
        self._checked_at = 0.0  # when the broker's cluster id was last asked (idle)
        self._producer: AIOKafkaProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._accepting = False  # between start() and close()
        self._next_connect = 0.0
        self._backoff = self.backoff_min
        self._last_sync = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start delivering; works with the broker down (events spool)."""
        if self._task is not None:
            return
        await asyncio.to_thread(self.spool.open)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._spooling = not self.spool.empty
        if self._spooling:
            log.info(
                "spool %s holds %d bytes to deliver", self.spool.directory, self.spool.pending_bytes
            )
        if self._stored_mode:
            self._marks = MarksReader(self.bootstrap_servers, self._on_marks)
            await self._marks.start()
        await self._connect()
        self._task = asyncio.create_task(self._pump(), name="tally-emitter")
        self._accepting = True

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event emitted so far is delivered or durably spooled."""
        assert self._progress is not None, "start() the emitter first"
        target = self._enqueued
        self._poke()

        async def settled() -> None:
            assert self._progress is not None
            async with self._progress:
                await self._progress.wait_for(lambda: self._left >= target or self._task_done())

        await asyncio.wait_for(settled(), timeout)
        await self._sync(force=True)

    async def wait_delivered(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged everything (nothing waits in memory or on
        disk to be sent); False if `timeout` passes first."""
        return await self._wait(self._delivered, timeout)

    async def wait_stored(self, timeout: float) -> bool:
        """Wait until Tally has stored everything emitted (with `confirm="broker"`: until
        it is delivered); False if `timeout` passes first."""
        return await self._wait(self._stored, timeout)

    def _delivered(self) -> bool:
        return not self._buffer and not self._inflight and not self._unread()

    def _stored(self) -> bool:
        return (
            self._delivered() and not self._verifying and not self._unconfirmed and self.spool.empty
        )

    async def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if done():
                    return True
            if time.monotonic() >= deadline:
                return False
            self._poke()
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Wait until what was emitted is stored (up to `close_timeout_s`), stop the pump,
        keep on disk what is still not confirmed, close the connection and the spool. Safe
        to call twice."""
        if self._task is None:
            return
        self._accepting = False
        stored_mode, connected = self._stored_mode, self._producer is not None
        if stored_mode and connected and not await self.wait_stored(self.close_timeout_s):
            log.warning(
                "closing before Tally confirmed every event as stored: the rest stays in"
                " spool %s for the next emitter that opens it",
                self.spool.directory,
            )
        self._closing = True
        self._poke()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._marks is not None:
            await self._marks.stop()
        with self._lock:
            rest = self._unconfirmed.take_all()
            if rest:
                with contextlib.suppress(SpoolFull, OSError):
                    self._to_spool_front(rest)
        await self._sync(force=True)
        await self._disconnect()
        await asyncio.to_thread(self._close_spool)

    stop = close

    def _close_spool(self) -> None:
        with self._lock:
            self.spool.close()

    async def __aenter__(self) -> Emitter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(
                sent=self._sent,
                spooled=self._spooled,
                failed=self._failed,
                rejected=self._rejected,
                buffered=len(self._buffer) + self._inflight,
                spool_pending_bytes=self.spool.pending_bytes,
                connected=self._producer is not None,
                unconfirmed=len(self._unconfirmed) + self._verifying,
                confirmed=self._confirmed,
                resent=self._resent,
                rewrites=self._rewrites,
            )

    def emit(self, event: Mapping[str, Any]) -> str:
        """Send an event given as a wire-format mapping, validated by the full contract.

        Slower than the typed helpers (pydantic validation, about 7 us); for relays and tests.
        """
        try:
            parsed = validate_event(dict(event))
            value = orjson.dumps(dict(event))
        except InvalidEvent:
            self._reject()
            raise
        except (TypeError, orjson.JSONEncodeError) as exc:
            self._reject()
            raise InvalidEvent(f"event: cannot be encoded as JSON ({exc})") from None
        if len(value) > MAX_EVENT_BYTES:
            self._reject()
            raise InvalidEvent(f"event: must be at most {MAX_EVENT_BYTES} bytes of JSON")
        self._offer(parsed.org_id.encode(), value)
        return parsed.event_id

    async def emit_stored(self, events: Sequence[Event], timeout: float) -> bool:
        """Send events already validated by the contract and wait until Tally has stored
        every one; False if that did not happen within `timeout`. Either way the events are
        kept and delivered like any other (sending them again is harmless: `event_id`).
        Raises `SpoolFull` if they can be neither sent nor spooled."""
        if not self._stored_mode:
            raise RuntimeError('emit_stored needs an emitter with confirm="stored"')
        records = [(e.org_id.encode(), e.model_dump_json().encode()) for e in events]
        producer, before = self._producer, self._cluster
        if not records:
            return True
        if producer is None or before is None or not self._accepting:
            for record in records:
                self._offer(*record)
            return False
        with self._lock:
            self._inflight += len(records)
        try:
            acked, unacked = await self._deliver(records, producer)
        finally:
            with self._lock:
                self._inflight -= len(records)
        with self._lock:
            self._sent += len(acked)
            self._verifying += len(acked)
        ticket = Ticket(len(records), lost=bool(unacked))
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        try:
            await self._track(acked, before, producer, ticket)
            for record in unacked:
                self._offer(*record)
            if ticket.done:
                return True
            if ticket.lost:
                return False
            try:
                return await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return False
        finally:
            self._waiters.pop(ticket, None)

    def _reject(self) -> None:
        with self._lock:
            self._rejected += 1

    def _submit(self, event: build.Event) -> str:
        # orjson's own output buffers are costly to keep alive by the thousand (about 5 us
        # each on this machine, measured); a right-sized copy costs well under 1 us.
        self._offer(event["org_id"].encode(), bytes(memoryview(orjson.dumps(event))))
        return event["event_id"]  # type: ignore[no-any-return]

    # -- the hot path ----------------------------------------------------------------------

    def _offer(self, key: bytes, value: bytes) -> None:
        """Buffer one encoded event, or spool it (see the backpressure policy above)."""
        if not self._accepting:
            raise RuntimeError(
                "the emitter is not running: `async with Emitter(...)`, or start() before "
                "emitting and nothing after close()"
            )
        with self._lock:
            if not self._spooling and len(self._buffer) + self._inflight < self.buffer_events:
                self._buffer.append((key, value))
                self._enqueued += 1
                if self._idle:
                    self._idle = False
                    self._poke()
                return
            try:
                self.spool.append(key, value)
            except SpoolFull:
                self._failed += 1
                raise
            except OSError as exc:
                self._failed += 1
                raise SpoolFull(f"spool {self.spool.directory} cannot be written: {exc}") from exc
            self._spooling = True
            self._spooled += 1
            if self._idle:
                self._idle = False
                self._poke()

    def _poke(self) -> None:
        """Wake the pump, from the loop's thread or any other."""
        if self._wake is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._wake.set)

    def _task_done(self) -> bool:
        return self._task is None or self._task.done()
