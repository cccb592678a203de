"""Small helpers over aiokafka clients: closing them without hanging, the cluster id."""

from __future__ import annotations

import asyncio
import logging

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
