"""Holes in a partition's offsets, read again before they are believed.

The offsets of `usage.events` follow each other: it is not compacted, and Tally's producers
are not transactional. A fetch that skips some is suspect. The embedded broker (Tansu) hands
out such fetches: while one producer's batch is still being written, a fetch can return the
batch another producer wrote after it (`docs/deploy.md`, *Known limits*), and a consumer
that moves on loses those events for good. So a hole is read again, from its first offset,
until it fills or has stayed for `reads` reads and `wait_s` seconds; only then is it taken
as a real gap and the records after it are used. On Kafka (HOLE_WAIT_S) such gaps are ones
Kafka makes (transaction markers, compaction, records that retention deleted before they
were read). The embedded broker can lose a batch it gave offsets to (after a restart under
load); the worker waits longer there, then stores and publishes the gap with its stored
marks so that producers send again what the broker acknowledged in it (`streams.marks`).
`waiting()` says how long the oldest hole has been waited on (a metric).

Pure logic: the caller fetches, seeks to `reread_from` and logs what `gaps` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

HOLE_READS = 3
HOLE_WAIT_S = 0.2


class _Record(Protocol):
    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=_Record)


@dataclass
class Taken(Generic[R]):
    records: Sequence[R]  # from the first offset asked for, without a hole
    reread_from: int | None = None  # the hole to read again from, if one stopped them
    gaps: list[tuple[int, int]] = field(default_factory=list)  # accepted: (first, last) offset


class HoleCheck:
    """Per partition: the hole being read again, since when, and how many times."""

    def __init__(self, reads: int = HOLE_READS, wait_s: float = HOLE_WAIT_S) -> None:
        self.reads = reads
        self.wait_s = wait_s
        self._holes: dict[int, tuple[int, int, float]] = {}  # partition -> (offset, reads, since)

    def waiting(self, now: float) -> float:
        """Seconds the oldest hole still being read again has been waited on (0: none)."""
        return max((now - since for _, _, since in self._holes.values()), default=0.0)

    def hole(self, partition: int) -> tuple[int, int, float] | None:
        """The partition's hole being read again: (offset, reads, since), or None."""
        return self._holes.get(partition)

    def take(self, partition: int, first: int, records: Sequence[R], now: float) -> Taken[R]:
        """The records from offset `first` on (`records` are in offset order, none before
        `first`) up to the first hole that is still being read again."""
        if not records or (
            records[0].offset == first and records[-1].offset - first == len(records) - 1
        ):  # offsets rise, so these follow each other: the usual case, at no cost per record
            self._holes.pop(partition, None)
            return Taken[R](records=records)  # as they came: no copy
        taken = Taken[R](records=[])
        expected = first
        for i, record in enumerate(records):
            if record.offset != expected:
                at, reads, since = self._holes.get(partition, (-1, 0, now))
                if at != expected:
                    reads, since = 0, now
                reads += 1
                if reads < self.reads or now - since < self.wait_s:
                    self._holes[partition] = (expected, reads, since)
                    taken.records = records[:i]
                    taken.reread_from = expected
                    return taken
                taken.gaps.append((expected, record.offset - 1))
                self._holes.pop(partition, None)
            expected = record.offset + 1
        self._holes.pop(partition, None)
        taken.records = records
        return taken

    def forget(self, partition: int) -> None:
        self._holes.pop(partition, None)
