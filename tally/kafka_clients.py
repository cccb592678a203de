"""Small helpers over aiokafka clients: closing them without hanging, the cluster id, the
pace of an idle consumer's fetches."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger("tally")


async def stop_client(client: AIOKafkaConsumer | AIOKafkaProducer, timeout: float) -> None:
    """Close a client within `timeout` seconds. aiokafka's consumer can wait in stop() on its
    own cancelled fetch task (seen against the embedded broker: `tally dlq list` hung there);
    the cancellation from the timeout lets stop() finish, as aiokafka suppresses it there.
    A consumer in a group has left it by then (stop() leaves the group first)."""
    try:
        await asyncio.wait_for(client.stop(), timeout)
    except TimeoutError:
        log.warning("a Kafka client did not close within %.0fs; leaving it", timeout)


async def cluster_id(client: AIOKafkaClient) -> str:
    """The cluster id of the broker answering now (a Metadata request for no topic, v2 or
    later). An embedded broker gets a fresh one at each start, so two answers that agree
    bracket a span in which every request went to the same log (`schemas.marks`)."""
    node = client.get_random_node()
    if node is None:
        await client.force_metadata_update()
        node = client.get_random_node()
    if node is None:
        raise KafkaConnectionError("no broker is known to ask for the cluster id")
    response = await client.send(node, MetadataRequest([]))
    found = getattr(response, "cluster_id", None)
    if not found:
        raise KafkaConnectionError("the broker does not report a cluster id (Metadata v2+)")
    return str(found)


class FetchPace:
    """How long the broker may hold a consumer's empty fetches: `busy_ms` while records
    flow, `idle_ms` once none came for `idle_after_s`, so an idle process and its broker do
    not trade dozens of empty fetches a second; the first records after a quiet spell wait
    up to `idle_ms` more. aiokafka reads the wait from its fetcher for each request; if that
    ever changes, the consumer keeps the wait it was configured with."""

    def __init__(
        self, consumer: AIOKafkaConsumer, busy_ms: int, idle_ms: int, idle_after_s: float = 1.0
    ) -> None:
        self.consumer = consumer
        self.busy_ms, self.idle_ms, self.idle_after_s = busy_ms, idle_ms, idle_after_s
        self._active_at = time.monotonic()

    def observe(self, active: bool) -> None:
        """After each fetch: whether it brought records that count as activity."""
        now = time.monotonic()
        if active:
            self._active_at = now
            self._set(self.busy_ms)
        elif now - self._active_at >= self.idle_after_s:
            self._set(self.idle_ms)

    def _set(self, ms: int) -> None:
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is not None and getattr(fetcher, "_fetch_max_wait_ms", None) not in (None, ms):
            fetcher._fetch_max_wait_ms = ms
