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
- `flush()` returns when everything emitted before it was delivered or is durably spooled;
  `close()` flushes, then closes. Events left on disk are delivered by the next emitter
  that opens the same spool directory, even in another process.

Delivery is at least once: a chunk that fails halfway is sent again, and Tally drops the
copies by `event_id`. Event ids are UUIDv7, so they also sort by emission time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from producers import build
from producers.spool import Record, Spool, SpoolFull
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
    spool_pending_bytes: int  # on disk now, not delivered yet
    connected: bool


class Emitter:
    """Send usage events to Kafka without losing any; use `async with` or start/close.

    `spool_dir` is required: it is where undelivered events wait. Give each emitter (each
    process) its own directory; a second emitter on the same one gets `SpoolLocked`.
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
    ) -> None:
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
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes)

        self._lock = threading.Lock()
        self._buffer: deque[Record] = deque()
        self._inflight = 0
        self._spooling = False  # new events must go to the spool (keeps the order)
        self._idle = False
        self._enqueued = 0  # events that entered the buffer
        self._left = 0  # of those, how many left memory (delivered or spooled), in order
        self._sent = self._spooled = self._failed = self._rejected = 0
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
        """Wait until nothing is left in memory or on disk; False if `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = not self._buffer and not self._inflight and self.spool.empty
            if done:
                return True
            self._poke()
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        """Flush, stop the pump, close the connection and the spool. Safe to call twice."""
        if self._task is None:
            return
        self._accepting = False
        self._closing = True
        self._poke()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
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
            )

    # -- the typed helpers (return the event_id; raise InvalidEvent on a bad argument) -------

    def llm_usage(
        self,
        *,
        org_id: str,
        agent_id: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        mode: str = "managed",
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Tokens of one LLM call; `cached_input_tokens` is the cached part of `input_tokens`."""
        try:
            event = build.llm_usage(
                org_id,
                agent_id,
                model,
                input_tokens,
                output_tokens,
                cached_input_tokens,
                mode,
                run_id,
                session_id,
                key_mode,
                ts,
                event_id,
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def tool_call(
        self,
        *,
        org_id: str,
        agent_id: str,
        connector: str,
        tool: str,
        success: bool,
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """One tool call through a connector; failed calls are recorded, never billed."""
        try:
            event = build.tool_call(
                org_id,
                agent_id,
                connector,
                tool,
                success,
                run_id,
                session_id,
                key_mode,
                ts,
                event_id,
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def gateway_request(
        self,
        *,
        org_id: str,
        agent_id: str,
        model: str,
        cache_hit: bool = False,
        mode: str = "managed",
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """One request through the LLM gateway."""
        try:
            event = build.gateway_request(
                org_id,
                agent_id,
                model,
                cache_hit,
                mode,
                run_id,
                session_id,
                key_mode,
                ts,
                event_id,
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def session_started(
        self,
        *,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """A session took a concurrency slot."""
        return self._session(
            "session.started", org_id, agent_id, session_id, run_id, key_mode, ts, event_id
        )

    def session_ended(
        self,
        *,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """A session reached a terminal state and freed its slot."""
        return self._session(
            "session.ended", org_id, agent_id, session_id, run_id, key_mode, ts, event_id
        )

    def storage_usage(
        self,
        *,
        org_id: str,
        agent_id: str,
        kind: str,
        byte_seconds: int,
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Storage kept: `byte_seconds` = bytes x seconds (`kind`: knowledge_base or traces)."""
        try:
            event = build.storage_usage(
                org_id, agent_id, kind, byte_seconds, run_id, session_id, key_mode, ts, event_id
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

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

    def emit_event(self, event: Event) -> str:
        """Send an event already validated by the contract (HTTP ingestion does this)."""
        self._offer(event.org_id.encode(), event.model_dump_json().encode())
        return event.event_id

    def _session(
        self,
        type_: str,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None,
        key_mode: str,
        ts: datetime | str | None,
        event_id: str | None,
    ) -> str:
        try:
            event = build.session(
                type_, org_id, agent_id, session_id, run_id, key_mode, ts, event_id
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

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

    # -- the pump --------------------------------------------------------------------------

    async def _pump(self) -> None:
        assert self._wake is not None
        while True:
            try:
                if self._producer is None:
                    self._spill()
                    if self._closing:
                        break
                    if time.monotonic() >= self._next_connect:
                        await self._connect()
                if self._producer is not None and self._buffer:
                    await self._send_buffer()
                elif self._producer is not None and self._spooling and not self._closing:
                    await self._replay()
                elif self._closing:
                    break
                await self._sync()
                await self._notify()
                if not self._has_work():
                    await self._sleep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the pump die: log, back off, go on
                if self._closing and self._producer is None:
                    self._drop_memory(exc)
                    break
                log.error("emitter pump error (%s); retrying", exc)
                await self._disconnect()
                await asyncio.sleep(self.backoff_min)
        await self._sync(force=True)
        await self._notify()

    def _drop_memory(self, exc: Exception) -> None:
        """Closing, the broker away and the spool refusing: the events in memory are lost."""
        with self._lock:
            lost = len(self._buffer)
            self._buffer.clear()
            self._failed += lost
            self._left += lost
        log.error("closing with %d events neither delivered nor spooled: %s", lost, exc)

    def _has_work(self) -> bool:
        if self._closing:
            return True
        if self._producer is None:
            return bool(self._buffer)
        return bool(self._buffer) or (self._spooling and not self.spool.empty)

    async def _sleep(self) -> None:
        assert self._wake is not None
        with self._lock:
            if self._buffer or self._closing:
                return
            self._idle = True
            self._wake.clear()
        timeout = self.fsync_interval
        if self._producer is None:
            timeout = max(0.0, min(timeout, self._next_connect - time.monotonic()))
        elif self._spooling:
            timeout = min(timeout, 0.05)  # new spooled events: replay them soon
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        with self._lock:
            self._idle = False

    async def _send_buffer(self) -> None:
        with self._lock:
            n = min(len(self._buffer), self.batch_events)
            chunk = [self._buffer.popleft() for _ in range(n)]
            self._inflight = n
        unacked = await self._deliver(chunk)
        with self._lock:
            self._inflight = 0
            self._sent += n - len(unacked)
            if unacked:
                self._spooling = True
                rest = list(self._buffer)
                self._buffer.clear()
                try:
                    self._to_spool_front(unacked + rest)
                finally:
                    self._left += n - len(unacked)  # the acked ones left memory in any case
                self._left += len(unacked) + len(rest)
            else:
                self._left += n
        if unacked:
            log.warning(
                "broker %s unreachable; %d events spooled to %s",
                self.bootstrap_servers,
                len(unacked),
                self.spool.directory,
            )
            await self._disconnect()

    def _to_spool_front(self, records: list[Record]) -> None:
        """Older than anything spooled: they go first (under the lock).

        If the spool cannot take them (full, or the disk fails), they go back to the front
        of the buffer and the error propagates: the pump retries after a pause, and nothing
        already accepted is dropped while the process lives.
        """
        if not records:
            return
        try:
            self.spool.prepend(records)
        except (SpoolFull, OSError):
            self._buffer.extendleft(reversed(records))
            raise
        self._spooled += len(records)

    def _spill(self) -> None:
        """The broker is away: move what is in memory to the front of the spool."""
        with self._lock:
            if not self._buffer:
                return
            records = list(self._buffer)
            self._buffer.clear()
            self._to_spool_front(records)
            self._left += len(records)
            self._spooling = True

    async def _replay(self) -> None:
        with self._lock:
            records, position = self.spool.read(self.batch_events)
        if records:
            unacked = await self._deliver(records)
            if unacked:
                await self._disconnect()
                return
        with self._lock:
            if records:
                self.spool.commit(position)
                self._sent += len(records)
            if self.spool.empty and not self._buffer:
                self._spooling = False
                log.info("spool %s delivered", self.spool.directory)

    async def _deliver(self, records: list[Record]) -> list[Record]:
        """Send records and wait for their acks; the ones not acknowledged, in order."""
        producer = self._producer
        if producer is None:
            return records
        futures: list[asyncio.Future[Any]] = []
        try:
            for key, value in records:
                futures.append(await producer.send(self.topic, value, key=key))
        except Exception as exc:
            log.debug("send failed after %d of %d: %r", len(futures), len(records), exc)
        results = await asyncio.gather(*futures, return_exceptions=True)
        unacked = [
            r for r, res in zip(records, results, strict=False) if isinstance(res, BaseException)
        ]
        unacked.extend(records[len(futures) :])
        if not unacked:
            self._backoff = self.backoff_min
        return unacked

    async def _connect(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",  # no enable_idempotence: Tansu refuses InitProducerId
            compression_type=self.compression,
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.delivery_timeout_ms,
            retry_backoff_ms=100,
        )
        try:
            await producer.start()
            # Never let a produce create the topic: a broker that lost it (an embedded one
            # restarted empty) would make it with its default partition count.
            if self.topic not in producer.client.cluster.topics():
                raise LookupError(f"topic {self.topic} does not exist on the broker yet")
        except Exception as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            with self._lock:
                self._spooling = True  # nowhere to send: new events go straight to disk
            self._next_connect = time.monotonic() + self._backoff
            log.info(
                "broker %s not ready (%s); retrying in %.1fs",
                self.bootstrap_servers,
                exc,
                self._backoff,
            )
            self._backoff = min(self._backoff * 2, self.backoff_max)
            return
        self._producer = producer
        log.info("connected to %s", self.bootstrap_servers)

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        with self._lock:
            self._spooling = self._spooling or bool(self._buffer) or not self.spool.empty
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.delivery_timeout_ms / 1000)
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)

    async def _sync(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_sync < self.fsync_interval:
            return
        self._last_sync = now
        with self._lock:
            fd = self.spool.sync_handle()
        if fd is not None:
            try:
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)

    async def _notify(self) -> None:
        assert self._progress is not None
        async with self._progress:
            self._progress.notify_all()

    def _task_done(self) -> bool:
        return self._task is None or self._task.done()
