"""The emitter's pump: delivery to Kafka and the spool's replay (`producers.confirmation`
holds the end-to-end confirmation).

One background task (the pump) sends the in-memory buffer to Kafka in chunks (acks="all",
keyed by org_id) and waits for each chunk's acknowledgements; when the broker is away it
moves what is in memory to the front of the disk spool, reconnects with backoff, and
replays the spool in order once the broker is back.

With `confirm="stored"` (the default) a chunk is done only once a stored mark confirms it
(`producers.confirmation`); at most `unconfirmed_max_events` wait for that: beyond it new
events wait in the buffer, then the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from producers.confirm import Ticket
from producers.confirmation import Ack, Confirmation
from producers.spool import Record, SpoolFull
from tally.kafka_clients import cluster_id

log = logging.getLogger("tally.emitter")


class Delivery(Confirmation):
    """The pump, mixed into `Emitter` (attributes: `producers.confirmation`)."""

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
                if self._producer is not None and self._buffer and self._room():
                    await self._send_buffer()
                elif (
                    self._producer is not None
                    and self._spooling
                    and not self._closing
                    and self._room()
                ):
                    await self._replay()
                elif self._closing and not self._buffer:
                    break
                await self._sync()
                await self._check_cluster()
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

    def _unread(self) -> bool:
        return self.spool.unread_bytes(self._replay_from) > 0

    def _has_work(self) -> bool:
        if self._closing:
            return True
        if self._producer is None:
            return bool(self._buffer)
        if not self._room():
            return False
        return bool(self._buffer) or (self._spooling and self._unread())

    async def _sleep(self) -> None:
        assert self._wake is not None
        with self._lock:
            if (self._buffer and self._room()) or self._closing:
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
            self._inflight += n
        producer, before = self._producer, self._cluster
        acked, unacked = await self._deliver(chunk)
        with self._lock:
            self._inflight -= n
            self._sent += len(acked)
            self._verifying += len(acked) if self._stored_mode else 0
        await self._track(acked, before, producer)
        with self._lock:
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
        already accepted is dropped while the process lives. Closing, the spool takes them
        beyond its bound: what was accepted is kept.
        """
        if not records:
            return
        try:
            self.spool.prepend(records, force=self._closing)
        except (SpoolFull, OSError):
            self._buffer.extendleft(reversed(records))
            raise
        self._spooled += len(records)
        self._spooling = True
        self._reset_replay()  # the spool's head moved: read it again from the cursor

    def _spill(self) -> None:
        """The broker is away: move what is in memory to the front of the spool."""
        with self._lock:
            if not self._buffer:
                return
            records = list(self._buffer)
            self._buffer.clear()
            self._to_spool_front(records)
            self._left += len(records)

    async def _replay(self) -> None:
        with self._lock:
            records, position = self.spool.read(self.batch_events, after=self._replay_from)
        if not records:
            with self._lock:
                if not self._buffer and not self._unread():
                    self._spooling = False  # all read: new events go through memory again
                    log.info("spool %s delivered", self.spool.directory)
            return
        producer, before, generation = self._producer, self._cluster, self._replay_generation
        acked, unacked = await self._deliver(records)
        if unacked:  # the whole chunk is still on disk: read it again once reconnected
            await self._disconnect()
            return
        if generation != self._replay_generation:
            # The spool's head moved while these were in flight (records put in front of
            # it): `position` may name a segment that is gone. They are read again from
            # the new cursor and sent again (counted once, by event_id).
            return
        if not self._stored_mode:
            with self._lock:
                self.spool.commit(position)
                self._sent += len(records)
            return
        ticket = Ticket(len(records), durable=True)
        with self._lock:
            self._replay_from = position
            self._replayed.append((ticket, position))
            self._sent += len(records)
            self._verifying += len(acked)
        await self._track(acked, before, producer, ticket)
        self._commit_replayed()

    async def _deliver(
        self, records: Sequence[Record], producer: AIOKafkaProducer | None = None
    ) -> tuple[list[Ack], list[Record]]:
        """Send records and wait for their acks: the acknowledged ones with their partition
        and offset, and the ones not acknowledged, in order."""
        producer = producer or self._producer
        if producer is None:
            return [], list(records)
        futures: list[asyncio.Future[Any]] = []
        try:
            for key, value in records:
                futures.append(await producer.send(self.topic, value, key=key))
        except Exception as exc:
            log.debug("send failed after %d of %d: %r", len(futures), len(records), exc)
        results = await asyncio.gather(*futures, return_exceptions=True)
        acked: list[Ack] = []
        unacked: list[Record] = []
        for record, result in zip(records, results, strict=False):
            if isinstance(result, BaseException):
                unacked.append(record)
            else:
                acked.append((result.partition, result.offset, record))
        unacked.extend(records[len(futures) :])
        if not unacked:
            self._backoff = self.backoff_min
        return acked, unacked

    # -- the connection --------------------------------------------------------------------

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
            cluster = await cluster_id(producer.client) if self._stored_mode else None
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
        if cluster is not None:
            await self._adopt(cluster)
        log.info("connected to %s", self.bootstrap_servers)

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        with self._lock:
            self._spooling = self._spooling or bool(self._buffer) or self._unread()
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
