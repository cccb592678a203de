"""The emitter's end-to-end confirmation: acknowledged events kept until a stored mark.

Each event the broker acknowledged is kept, with the partition and offset it got and the
cluster id of the broker that gave them, until a worker's stored mark of that cluster passes
its offset (`schemas.marks`). The cluster id is asked of the broker after each chunk's
acknowledgements and compared with the one asked before the chunk was sent: the same id
both times means the chunk went to that broker's log (an embedded broker gets a new id at
every start). A broker that restarted empty has another id: every event it did not confirm
is sent again (the worker drops copies by `event_id`); so is an event acknowledged in a gap
a mark names. Spooled events leave the spool only once confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque

from aiokafka import AIOKafkaProducer

from producers.confirm import Settled, Ticket, Unconfirmed
from producers.spool import Position, Record, Spool, SpoolFull
from schemas.marks import StoredMarks
from tally.kafka_clients import cluster_id

log = logging.getLogger("tally.emitter")

Ack = tuple[int, int, Record]  # partition, offset, record
CLUSTER_CHECK_S = 0.5


class Confirmation:
    """Mixed into `Emitter` (through `Delivery`), which sets the attributes below in its
    constructor."""

    bootstrap_servers: str
    topic: str
    batch_events: int
    linger_ms: int
    compression: str | None
    delivery_timeout_ms: int
    fsync_interval: float
    backoff_min: float
    backoff_max: float
    client_id: str
    confirm: str
    unconfirmed_max_events: int
    spool: Spool
    _lock: threading.Lock
    _buffer: deque[Record]
    _inflight: int
    _spooling: bool
    _idle: bool
    _left: int
    _sent: int
    _spooled: int
    _failed: int
    _confirmed: int
    _resent: int
    _rewrites: int
    _producer: AIOKafkaProducer | None
    _wake: asyncio.Event | None
    _progress: asyncio.Condition | None
    _closing: bool
    _next_connect: float
    _backoff: float
    _last_sync: float
    _checked_at: float
    _unconfirmed: Unconfirmed
    _cluster: str | None
    _verifying: int
    _replay_from: Position | None
    _replayed: deque[tuple[Ticket, Position]]
    _replay_generation: int
    _waiters: dict[Ticket, asyncio.Future[bool]]

    def _poke(self) -> None:
        raise NotImplementedError

    @property
    def _stored_mode(self) -> bool:
        return self.confirm == "stored"

    def _room(self) -> bool:
        """Whether more events may be sent before earlier ones are confirmed."""
        return (
            not self._stored_mode
            or self._closing
            or len(self._unconfirmed) < self.unconfirmed_max_events
        )

    def _to_spool_front(self, records: list[Record]) -> None:
        raise NotImplementedError

    async def _track(
        self,
        acked: list[Ack],
        before: str | None,
        producer: AIOKafkaProducer | None,
        ticket: Ticket | None = None,
    ) -> None:
        """Keep acknowledged events until a stored mark confirms them, once the broker's
        cluster id after their acknowledgement proves which log they went to."""
        if not self._stored_mode:
            return
        after = None
        if acked and producer is not None:
            with contextlib.suppress(Exception):
                after = await cluster_id(producer.client)
        settled = Settled()
        with self._lock:
            self._verifying -= len(acked)
            if after is not None and after == before:
                settled = self._unconfirmed.add(after, acked, ticket)
                if settled.rewritten:
                    self._rewritten(after)
                self._settled(settled)
            elif acked:
                if ticket is not None:
                    ticket.lost = True
                if ticket is None or not ticket.durable:  # spooled ones are still on disk
                    self._resent += len(acked)
                    # If the spool refuses them, they went back to the buffer: sent again.
                    with contextlib.suppress(SpoolFull, OSError):
                        self._to_spool_front([record for _, _, record in acked])
                else:
                    self._reset_replay()
        if after is not None and after != before:
            await self._adopt(after)
        self._resolve(settled.done)

    async def _check_cluster(self) -> None:
        """While events wait for their stored marks, ask the broker its cluster id every
        CLUSTER_CHECK_S: a broker that restarted empty after the last send would otherwise
        hold them for good (its marks are of another cluster), with nothing left to send
        that would show it."""
        producer = self._producer
        if not self._stored_mode or producer is None or not (self._unconfirmed or self._replayed):
            return
        now = time.monotonic()
        if now - self._checked_at < CLUSTER_CHECK_S:
            return
        self._checked_at = now
        try:
            cluster = await cluster_id(producer.client)
        except Exception as exc:  # the broker is away: the next send or check will tell
            log.debug("cannot ask the broker its cluster id: %r", exc)
            return
        if cluster != self._cluster:
            await self._adopt(cluster)

    async def _adopt(self, cluster: str) -> None:
        """The broker answering now is `cluster`: what another one acknowledged and did not
        confirm is sent again."""
        with self._lock:
            if cluster == self._cluster:
                return
            if self._cluster is not None:
                log.warning(
                    "broker %s is a new log (cluster %s, was %s): sending again the %d events"
                    " it has not confirmed as stored",
                    self.bootstrap_servers,
                    cluster,
                    self._cluster,
                    len(self._unconfirmed),
                )
            self._cluster = cluster
            others = self._unconfirmed.take_others(cluster)
            self._reset_replay()
            if others:
                self._resent += len(others)
                with contextlib.suppress(SpoolFull, OSError):  # else back in the buffer
                    self._to_spool_front(others)

    def _rewritten(self, cluster: str) -> None:
        """The broker acknowledged an offset twice: it rewrote its log, and one of the two
        batches is not in it. Everything it has not confirmed is sent again (the worker
        drops copies by `event_id`). Under the lock."""
        again = self._unconfirmed.take_cluster(cluster)
        log.warning(
            "broker %s (cluster %s) acknowledged an offset twice: its log was rewritten;"
            " sending again the %d events it has not confirmed as stored",
            self.bootstrap_servers,
            cluster,
            len(again),
        )
        self._rewrites += 1
        self._resent += len(again)
        self._reset_replay()
        if again:
            with contextlib.suppress(SpoolFull, OSError):  # else back in the buffer
                self._to_spool_front(again)

    def _reset_replay(self) -> None:
        """Read the spool again from its cursor: chunks read ahead and not confirmed will
        not be (a new log, or a new head), so they are sent again."""
        for ticket, _ in self._replayed:
            ticket.lost = True
        self._replayed.clear()
        self._replay_from = None
        self._replay_generation += 1
        if not self.spool.empty:
            self._spooling = True

    def _on_marks(self, marks: StoredMarks) -> None:
        """A worker's stored mark (from `MarksReader`, on the loop's thread)."""
        done: list[Ticket] = []
        with self._lock:
            room = self._room()
            for partition, next_offset in marks.marks.items():
                settled = self._unconfirmed.mark(
                    marks.cluster, partition, next_offset, marks.gaps.get(partition, ())
                )
                self._settled(settled)
                done.extend(settled.done)
            freed = not room and self._room()
        self._resolve(done)
        self._commit_replayed()
        if freed or done:
            self._poke()

    def _settled(self, settled: Settled) -> None:
        """Count what a mark confirmed; send again (through the spool) what it says the
        broker lost, and read the spool again if some of its records were. Under the lock."""
        self._confirmed += settled.confirmed
        if settled.lost:
            log.warning(
                "the broker lost %d events it had acknowledged (a gap in its log); sending"
                " them again",
                len(settled.lost),
            )
            self._resent += len(settled.lost)
            with contextlib.suppress(SpoolFull, OSError):  # else back in the buffer
                self._to_spool_front(settled.lost)
        if any(ticket.lost for ticket, _ in self._replayed):
            self._reset_replay()

    def _commit_replayed(self) -> None:
        """Move the spool's cursor past the replayed chunks confirmed, in order."""
        with self._lock:
            while self._replayed and self._replayed[0][0].done:
                _, position = self._replayed.popleft()
                self.spool.commit(position)
            if not self._replayed and self.spool.unread_bytes(self._replay_from) == 0:
                self._replay_from = None  # committed through the end: the cursor is there

    def _resolve(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            waiter = self._waiters.pop(ticket, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
