"""The operators' reads of a topic (`tally dlq list`, `tally reconcile`) end, with what the
log holds or with a clear error, never by hanging."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from commands.ops import kafka
from tally.broker import EmbeddedBroker


async def _topic_with(bootstrap: str, values: list[bytes]) -> str:
    topic = f"reads-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v)
    finally:
        await producer.stop()
    return topic


async def test_a_scan_reads_every_message_of_the_log_once(broker: EmbeddedBroker):
    values = [f"m{i}".encode() for i in range(5)]
    topic = await _topic_with(broker.bootstrap_servers, values)
    async with kafka.reader(broker.bootstrap_servers) as consumer:
        ranges = await kafka.log_ranges(consumer, topic)
        assert ranges == {0: (0, 5)}
        seen = [m.value async for batch in kafka.scan(consumer, topic, ranges) for m in batch]
    assert seen == values


async def test_a_scan_missing_offsets_says_which_instead_of_hanging(broker: EmbeddedBroker):
    topic = await _topic_with(broker.bootstrap_servers, [b"a", b"b", b"c"])
    async with kafka.reader(broker.bootstrap_servers) as consumer:
        seen = []
        with pytest.raises(kafka.BrokerUnavailable) as raised:
            # The range claims three messages more than the log holds.
            async for batch in kafka.scan(consumer, topic, {0: (0, 6)}, stall=0.3, timeout=2.0):
                seen += [m.value for m in batch]
    assert seen == [b"a", b"b", b"c"]
    assert str(raised.value) == (
        f"{topic}/0: the broker returned no message from offset 3 (the log ends at 6) within 2s"
    )
