"""Closing aiokafka clients without hanging on the way out."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

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
