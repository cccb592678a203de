"""The partition of an org: Kafka's default partitioner, computed without a Kafka client."""

import random
import string

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tally.domain.counters import encode_key
from tally.domain.partitioning import key_partition, partition_of

COUNTS = (1, 2, 3, 4, 6, 7, 8, 12, 16, 24, 48, 100, 1024)


def keys(n: int) -> list[str]:
    """Org ids of every length from 1 to 128 (every murmur2 tail), ASCII and not."""
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_.:'\"\\ üé日本🙂"
    out = ["acme", "org-1", "ünïcode-org", "x" * 128]
    out += ["".join(rng.choice(alphabet) for _ in range(1 + i % 128)) for i in range(n)]
    return out


def test_the_partition_of_an_org_is_the_one_aiokafka_picks_for_its_key():
    partitioner = DefaultPartitioner()
    for n in COUNTS:
        parts = list(range(n))
        for org in keys(3_000):
            assert partition_of(org, n) == partitioner(org.encode(), parts, parts), (org, n)


def test_the_partition_of_a_counter_key_is_the_one_aiokafka_picks_for_it():
    partitioner = DefaultPartitioner()
    for n in COUNTS:
        parts = list(range(n))
        for i, org in enumerate(keys(500)):
            key = encode_key((org, "tokens", 20_000 + i))
            assert key_partition(key, n) == partitioner(key, parts, parts), (org, n)


def test_every_partition_gets_orgs_and_a_count_below_one_is_refused():
    assert {partition_of(org, 12) for org in keys(500)} == set(range(12))
    with pytest.raises(ValueError, match="at least one partition"):
        partition_of("acme", 0)
