"""Create Tally's topics if they do not exist (idempotent, safe at every start-up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.marks import STORED_TOPIC
from tally.config import ALERTS_TOPIC, COUNTERS_TOPIC, DLQ_TOPIC, EVENTS_TOPIC

log = logging.getLogger("tally.topics")


def tally_topics(partitions: int) -> list[NewTopic]:
    """Tally's topics, `usage.events` and `usage.counters` with `partitions` partitions."""
    return [
        NewTopic(EVENTS_TOPIC, partitions, 1),
        NewTopic(DLQ_TOPIC, 1, 1),
        NewTopic(COUNTERS_TOPIC, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
        # Stored marks: each message supersedes the last; producers read from the end.
        NewTopic(STORED_TOPIC, 1, 1, topic_configs={"retention.ms": "3600000"}),
        # Alerts, keyed by org (the store keeps them all; GET /api/v2/alerts reads it).
        NewTopic(ALERTS_TOPIC, partitions, 1),
    ]


async def ensure_topics(bootstrap_servers: str, partitions: int, timeout: float = 30.0) -> None:
    topics = tally_topics(partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"broker at {bootstrap_servers} is unreachable: {exc}") from exc
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        await admin.close()
