"""What the worker sends besides the rows it stores: counter values on `usage.counters`
(absolute, so republishing is harmless), heartbeats, dead letters and forwarded events.
Mixed into `streams.worker.Worker`, which owns the clients and the state.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.batch import BatchResult, PartitionState
from tally import metrics
from tally.config import COUNTERS_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, Settings
from tally.domain.counters import HEARTBEAT_KEY, CounterKey, encode_key
from tally.domain.partitioning import key_partition

log = logging.getLogger("tally.worker")


class Publications:
    """The worker's publications (attributes: set by `Worker.__init__`)."""

    settings: Settings
    states: dict[int, PartitionState]
    partitions: int
    dead_letters: int
    forwarded: int
    _producer: AIOKafkaProducer | None
    _consumer: AIOKafkaConsumer | None

    async def _dead_letters(self, results: list[tuple[TopicPartition, BatchResult]]) -> None:
        assert self._producer is not None
        futures = []
        for _, result in results:
            for dead in result.dead:
                headers = [
                    ("error", dead.error.encode()),
                    ("source", f"{EVENTS_TOPIC}/{dead.partition}/{dead.offset}".encode()),
                ]
                value = orjson.dumps(
                    {
                        "error": dead.error,
                        "partition": dead.partition,
                        "offset": dead.offset,
                        "value": dead.value.decode("utf-8", "backslashreplace"),
                    }
                )
                futures.append(await self._producer.send(DLQ_TOPIC, value, headers=headers))
                self.dead_letters += 1
                metrics.dead_letter(dead.error)
                log.warning(
                    "dead letter: %s",
                    dead.error,
                    extra={"partition": dead.partition, "offset": dead.offset},
                )
        if futures:
            await asyncio.gather(*futures)

    async def _forward(self, results: list[tuple[TopicPartition, BatchResult]]) -> None:
        """Send each event that arrived on a partition its org does not map to on to the one
        it maps to, keyed by its org_id."""
        assert self._producer is not None
        futures = []
        for tp, result in results:
            if not result.forwards:
                continue
            for f in result.forwards:
                await self._until_known(f.partition)
                futures.append(
                    await self._producer.send(
                        EVENTS_TOPIC,
                        f.value,
                        key=f.org_id.encode(),
                        partition=f.partition,
                        headers=list(f.headers),
                    )
                )
            self.forwarded += len(result.forwards)
            metrics.forwarded.inc(len(result.forwards))
            first = result.forwards[0]
            log.warning(
                "partition %d: forwarded %d events whose org_id maps to another partition of"
                " %d (org %r to partition %d, offset %d); producers must key by org_id with"
                " Kafka's default (murmur2) partitioner",
                tp.partition,
                len(result.forwards),
                self.partitions,
                first.org_id,
                first.partition,
                first.offset,
                extra={"partition": tp.partition, "offset": first.offset},
            )
        if futures:
            await asyncio.gather(*futures)

    async def _until_known(self, partition: int) -> None:
        """Wait until the producer's metadata knows a partition the group leader assigned
        from (it may be older than the leader's just after an increase)."""
        assert self._producer is not None
        delay = 0.1
        while partition not in (await self._producer.partitions_for(EVENTS_TOPIC)):
            log.warning("partition %d is not in the producer's metadata yet; refreshing", partition)
            await self._producer.client.force_metadata_update()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _publish(self, values: dict[CounterKey, int]) -> None:
        """Send absolute counter values: republishing one is always harmless. They go out as
        one record batch per partition of the topic, each message to the partition a keyed
        send would pick (so a key's values stay in order on one partition)."""
        producer = self._producer
        assert producer is not None
        if not values:
            return
        partitions = len(await producer.partitions_for(COUNTERS_TOPIC))
        at = int(time.time() * 1000)
        batches: dict[int, BatchBuilder] = {}
        for counter, value in values.items():
            key = encode_key(counter)
            message = orjson.dumps({"v": value, "t": at})
            partition = key_partition(key, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=message, timestamp=None) is None:  # full
                await producer.send_batch(batch, COUNTERS_TOPIC, partition=partition)
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=message, timestamp=None)
        for partition, batch in batches.items():
            await producer.send_batch(batch, COUNTERS_TOPIC, partition=partition)

    async def _heartbeat(self) -> None:
        """Per owned partition: the time the counters are current to and the lag behind it."""
        assert self._producer is not None and self._consumer is not None
        at = int(time.time() * 1000)
        lags = {}
        for partition in self.states:
            tp = TopicPartition(EVENTS_TOPIC, partition)
            high = self._consumer.highwater(tp)
            lag = max(0, high - self.states[partition].next_offset) if high is not None else 0
            lags[partition] = lag
            beat = encode_key((HEARTBEAT_KEY, str(partition), 0))
            await self._producer.send(COUNTERS_TOPIC, orjson.dumps({"v": lag, "t": at}), key=beat)
        metrics.partition_lag(lags)

    async def _flush_producer(self) -> None:
        assert self._producer is not None
        await self._producer.flush()
