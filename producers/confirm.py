"""Events the broker acknowledged and Tally has not yet stored (pure bookkeeping, no I/O).

Each entry is a record with the cluster id, partition and offset its acknowledgement gave.
A stored mark (`schemas.marks`) of the same cluster confirms every entry of its partition
below the mark. Entries of another cluster (a broker that restarted empty) will never be
confirmed: `take_others` hands them back to be sent again.

A `Ticket` follows a group of records (an HTTP batch) and is done when all are confirmed;
records handed back to be sent again leave their ticket undone for good.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

Record = tuple[bytes, bytes]  # (key, value)


@dataclass(eq=False, slots=True)
class Ticket:
    """Counts the confirmations of a group of records."""

    size: int
    durable: bool = False  # the records are kept elsewhere (the spool): never handed back
    confirmed: int = 0
    lost: bool = False  # some records went back to be sent again: never done

    @property
    def done(self) -> bool:
        return not self.lost and self.confirmed >= self.size


@dataclass(slots=True)
class _Entry:
    offset: int
    record: Record
    ticket: Ticket | None = None


@dataclass
class Unconfirmed:
    """Acknowledged records per (cluster, partition), in acknowledgement order."""

    _by: dict[tuple[str, int], deque[_Entry]] = field(default_factory=dict)
    _marks: dict[tuple[str, int], int] = field(default_factory=dict)
    count: int = 0

    def __len__(self) -> int:
        return self.count

    def add(
        self, cluster: str, acks: Iterable[tuple[int, int, Record]], ticket: Ticket | None = None
    ) -> list[Ticket]:
        """Keep `(partition, offset, record)` acknowledgements of `cluster`; those a mark
        already passed are confirmed at once. Returns the tickets this completed."""
        done: list[Ticket] = []
        for partition, offset, record in acks:
            key = (cluster, partition)
            if offset < self._marks.get(key, 0):
                if ticket is not None:
                    ticket.confirmed += 1
                continue
            entries = self._by.get(key)
            if entries is None:
                entries = self._by[key] = deque()
            entries.append(_Entry(offset, record, ticket))
            self.count += 1
        if ticket is not None and ticket.done:
            done.append(ticket)
        return done

    def mark(self, cluster: str, partition: int, next_offset: int) -> tuple[int, list[Ticket]]:
        """A stored mark: every entry of the partition below `next_offset` is confirmed.
        Returns how many were, and the tickets this completed."""
        key = (cluster, partition)
        if next_offset <= self._marks.get(key, 0):
            return 0, []
        self._marks[key] = next_offset
        entries = self._by.get(key)
        if not entries:
            return 0, []
        confirmed, done = 0, []
        kept: deque[_Entry] = deque()
        for entry in entries:  # usually a prefix, but a straggler may sit after a later one
            if entry.offset < next_offset:
                confirmed += 1
                if entry.ticket is not None:
                    entry.ticket.confirmed += 1
                    if entry.ticket.done:
                        done.append(entry.ticket)
            else:
                kept.append(entry)
        if kept:
            self._by[key] = kept
        else:
            del self._by[key]
        self.count -= confirmed
        return confirmed, done

    def take_others(self, cluster: str) -> list[Record]:
        """Every record acknowledged by another cluster than `cluster` (to send again; those
        of a durable ticket are dropped, their owner reads them again), and forget the other
        clusters' marks."""
        out: list[Record] = []
        for key in [k for k in self._by if k[0] != cluster]:
            out.extend(self._take(key))
        for key in [k for k in self._marks if k[0] != cluster]:
            del self._marks[key]
        return out

    def take_all(self) -> list[Record]:
        """Every record not confirmed, but those of durable tickets (to keep them on disk at
        close)."""
        out: list[Record] = []
        for key in list(self._by):
            out.extend(self._take(key))
        return out

    def _take(self, key: tuple[str, int]) -> list[Record]:
        entries = self._by.pop(key)
        self.count -= len(entries)
        out: list[Record] = []
        for entry in entries:
            if entry.ticket is not None:
                entry.ticket.lost = True
                if entry.ticket.durable:
                    continue
            out.append(entry.record)
        return out
