"""Which partition of usage.events an org's events belong to: Kafka's default partitioner.

Producers key every event by `org_id`, and the Java client, aiokafka and Tally's emitter pick
the partition of a keyed message as `(murmur2(key bytes) & 0x7fffffff) % partitions`. One
partition's worker keeps all of an org's state, so the worker checks each event arrived on
the partition its org maps to (`streams.batch.process`), and the store selects an org's rows
by the same function, `kafkaMurmurHash(org_id) % n` in ClickHouse (`tally.store.queries`),
so that a partition's state follows its orgs when the partition count changes.
"""

from __future__ import annotations

from functools import lru_cache

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as an unsigned int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h = ((h ^ data[whole]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=1 << 16)
def partition_of(org_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for key `org_id` among `partitions`."""
    return key_partition(org_id.encode(), partitions)


@lru_cache(maxsize=1 << 18)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for message key `key` (the worker
    batches counter messages per partition itself, to the partitions `send(key=...)` picks)."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
