"""Which orgs this API process evaluates and delivers alerts for, among its replicas.

Every API process joins one consumer group on `usage.alerts` (plain aiokafka: it joins at
once) and takes the orgs of the partitions it is assigned, by the same key partitioning as
the events. One replica per org evaluates and sends, so a second replica adds no second
delivery; while a rebalance moves an org (a replica killed: after the session timeout) two
may evaluate it for a moment, and the alert ids keep that to one alert, a delivery at most
sent twice with the same `webhook-id` (Standard Webhooks receivers deduplicate by it).
The group's messages are not read: the partitions stay paused. The API of a `tally up`
is the only one of its own broker (`sole`): it owns every org at once, without a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from tally.config import ALERTS_TOPIC
from tally.domain.partitioning import partition_of
from tally.kafka_clients import stop_client

log = logging.getLogger("tally.alerts")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Ownership) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.owner.partitions = set()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.owner.assigned(assigned)


class Ownership:
    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        partitions: int,
        session_ms: int,
        sole: bool = False,
    ) -> None:
        self.sole = sole
        self.partitions: set[int] = set()
        self.generation = 0  # moves at every assignment
        self.count = partitions
        self._config = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": max(session_ms // 10, 100),
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def owns(self, org_id: str) -> bool:
        return partition_of(org_id, self.count) in self.partitions

    def assigned(self, assigned: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self._consumer.pause(*assigned)
        # Orgs map to partitions as keys do on the topic as it is (its own partition count).
        self.count = len(self._consumer.partitions_for_topic(ALERTS_TOPIC) or ()) or self.count
        self.partitions = {tp.partition for tp in assigned}
        self.generation += 1
        log.info("alerts: this process evaluates partitions %s", sorted(self.partitions))

    async def start(self) -> None:
        if self.sole:
            self.partitions = set(range(self.count))
            self.generation += 1
            log.info("alerts: this process evaluates every org (the only API of its broker)")
            return
        self._consumer = AIOKafkaConsumer(**self._config)
        self._consumer.subscribe([ALERTS_TOPIC], listener=_Listener(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="tally-alerts-group")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:  # polls keep the membership alive; paused partitions fetch nothing
            with contextlib.suppress(Exception):
                await self._consumer.getmany(timeout_ms=500)
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await stop_client(self._consumer, 10)
            self._consumer = None
