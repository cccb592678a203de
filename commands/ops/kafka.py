"""Broker reads for the operations commands: log ranges, committed offsets, scans, produce.

Two broker habits shape this module (both hold for the embedded broker, and the code is
right on any Kafka too): ListOffsets "latest" may answer the first offset of the last
record batch rather than the log end, so the end of a log is the high watermark of a
fetch; and a fetch may restart at the first offset of a record batch, so a reader skips
every offset below the one it expects next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tally.kafka_clients import stop_client

CLOSE_TIMEOUT_S = 3.0  # a command that has its answer does not wait longer to close


class BrokerUnavailable(RuntimeError):
    """The broker did not answer, or the topic does not exist."""


@dataclass(frozen=True, slots=True)
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


@contextlib.asynccontextmanager
async def reader(bootstrap: str, timeout: float = 5.0) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group (reads only, commits nothing)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        request_timeout_ms=int(timeout * 1000) + 1000,
    )
    await _start(consumer, bootstrap, timeout)
    try:
        yield consumer
    finally:
        await stop_client(consumer, CLOSE_TIMEOUT_S)


async def _start(
    client: AIOKafkaConsumer | AIOKafkaProducer, bootstrap: str, timeout: float
) -> None:
    """Start a client, or stop it again and say that the broker is unreachable."""
    try:
        await asyncio.wait_for(client.start(), timeout)
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await stop_client(client, CLOSE_TIMEOUT_S)
        raise BrokerUnavailable(f"broker {bootstrap} is unreachable: {exc!r}") from None


async def partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float = 5.0) -> list[int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await consumer.topics()
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        if asyncio.get_running_loop().time() > deadline:
            raise BrokerUnavailable(f"topic {topic} does not exist on the broker")
        await asyncio.sleep(0.1)


async def log_ranges(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 5.0
) -> dict[int, tuple[int, int]]:
    """`{partition: (first offset, log end)}`; the end is a fetch's high watermark."""
    tps = [TopicPartition(topic, p) for p in await partitions(consumer, topic, timeout)]
    consumer.assign(tps)
    lows = await consumer.beginning_offsets(tps)
    lasts = await consumer.end_offsets(tps)  # at most the log end: a fetch there is small
    for tp in tps:
        consumer.seek(tp, lasts[tp])
    deadline = asyncio.get_running_loop().time() + timeout
    while any(consumer.highwater(tp) is None for tp in tps):
        if asyncio.get_running_loop().time() > deadline:
            raise BrokerUnavailable(f"no fetch answer for {topic} within {timeout}s")
        await consumer.getmany(timeout_ms=100, max_records=1)
    out = {}
    for tp in tps:
        high = consumer.highwater(tp)
        assert high is not None
        out[tp.partition] = (min(lows[tp], high), high)
    return out


@contextlib.asynccontextmanager
async def group_reader(bootstrap: str, group_id: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that reads a group's committed offsets; it subscribes to nothing, so it
    never joins the group nor takes a partition from its members."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise BrokerUnavailable(f"broker {bootstrap} is unreachable: {exc!r}") from None
    try:
        yield consumer
    finally:
        await stop_client(consumer, CLOSE_TIMEOUT_S)


async def committed(consumer: AIOKafkaConsumer, topic: str, parts: Iterable[int]) -> dict[int, int]:
    """The group's committed offsets (partitions with none are left out)."""
    out = {}
    for p in parts:
        offset = await consumer.committed(TopicPartition(topic, p))
        if offset is not None:
            out[p] = int(offset)
    return out


async def scan(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    stall: float = 5.0,
    timeout: float = 30.0,
) -> AsyncIterator[list[Message]]:
    """Every message of `low <= offset < high` per partition, once each, in fetch batches.

    A partition that yields nothing new for `stall` seconds is sought again at the offset
    it is due to read; one that still yields nothing `timeout` seconds after its last
    message raises BrokerUnavailable, naming the offsets it did not return."""
    expect = {p: low for p, (low, high) in ranges.items() if high > low}
    tps = {p: TopicPartition(topic, p) for p in expect}
    consumer.assign(list(tps.values()))
    for p, tp in tps.items():
        consumer.seek(tp, expect[p])
    loop = asyncio.get_running_loop()
    moved = {p: loop.time() for p in expect}
    sought = dict(moved)
    while expect:
        fetched = await consumer.getmany(*[tps[p] for p in expect], timeout_ms=200)
        for tp, msgs in fetched.items():
            p = tp.partition
            if p not in expect:
                continue
            high = ranges[p][1]
            batch = [
                Message(
                    p,
                    m.offset,
                    m.key,
                    m.value,
                    tuple((k, bytes(v)) for k, v in (m.headers or ())),
                    m.timestamp,
                )
                for m in msgs
                if expect[p] <= m.offset < high
            ]
            if msgs and msgs[-1].offset + 1 > expect[p]:
                expect[p] = msgs[-1].offset + 1
                moved[p] = loop.time()
            if expect[p] >= high:
                del expect[p]
            if batch:
                yield batch
        now = loop.time()
        for p in expect:
            if now - moved[p] > timeout:
                raise BrokerUnavailable(
                    f"{topic}/{p}: the broker returned no message from offset {expect[p]}"
                    f" (the log ends at {ranges[p][1]}) within {timeout:.0f}s"
                )
            if now - max(moved[p], sought[p]) > stall:
                consumer.seek(tps[p], expect[p])
                sought[p] = now


async def read_at(
    consumer: AIOKafkaConsumer, topic: str, offset_of: dict[int, list[int]], timeout: float = 5.0
) -> dict[tuple[int, int], bytes | None]:
    """The values of the messages at these offsets (`{partition: [offset, ...]}`); a message
    the log does not hold (any more) is None."""
    out: dict[tuple[int, int], bytes | None] = {}
    for p, offsets in offset_of.items():
        tp = TopicPartition(topic, p)
        consumer.assign([tp])
        for offset in offsets:
            consumer.seek(tp, offset)
            deadline = asyncio.get_running_loop().time() + timeout
            found: bytes | None = None
            while asyncio.get_running_loop().time() < deadline:
                msgs = (await consumer.getmany(tp, timeout_ms=200, max_records=500)).get(tp, [])
                later = [m for m in msgs if m.offset >= offset]  # a fetch may start earlier
                if later:
                    found = later[0].value if later[0].offset == offset else None
                    break
            out[(p, offset)] = found
    return out


@contextlib.asynccontextmanager
async def writer(bootstrap: str, timeout: float = 10.0) -> AsyncIterator[AIOKafkaProducer]:
    """A producer that waits for every replica (no idempotence: the embedded broker has none;
    the event_id dedup makes a retried send harmless)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20
    )
    await _start(producer, bootstrap, timeout)
    try:
        yield producer
    finally:
        await producer.stop()
