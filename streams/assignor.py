"""The worker group's partition assignor: round-robin, plus the partition count it assigned.

A worker rebuilds each partition it gains from the orgs that map to it under the topic's
partition count (`tally.domain.partitioning`). Every worker of a generation must use the same
count, or two of them could each count part of an org. So the group leader, which computes
the assignment from its metadata, hands its count of usage.events to every member in the
assignment's user data, and each member uses that count rather than its own metadata, which
may be older. When the count changes, the leader's metadata notices it and the group
rebalances, and every member rebuilds its partitions under the new count.

The group also offers plain `roundrobin`, so that workers of an older release (which know no
other protocol) still form one group with these during a rolling upgrade; with it, a member
falls back to its own metadata (`Worker.acquire`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)


class CountingAssignor:
    """A round-robin assignor whose assignments carry `{"partitions": {topic: count}}`."""

    name = "tally-roundrobin"
    version = 0

    def __init__(self) -> None:
        self._counts: dict[str, int] | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return RoundRobinPartitionAssignor.metadata(topics)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = {t for m in members.values() for t in m.subscription}
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in sorted(topics)}
        data = orjson.dumps({"partitions": counts})
        return {
            member: ConsumerProtocolMemberAssignment(a.version, a.assignment, data)
            for member, a in RoundRobinPartitionAssignor.assign(cluster, members).items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        try:
            counts = orjson.loads(assignment.user_data or b"{}").get("partitions")
        except (orjson.JSONDecodeError, AttributeError):
            counts = None
        self._counts = counts if isinstance(counts, dict) else None

    def take(self, topic: str) -> int | None:
        """The leader's partition count of `topic` for the assignment just received, once:
        None when this generation's assignment did not come from this assignor."""
        counts, self._counts = self._counts, None
        count = counts.get(topic) if counts else None
        return count if isinstance(count, int) and count > 0 else None
