"""Events the broker acknowledged and Tally has not yet stored (pure bookkeeping, no I/O).

Each entry is a record with the cluster id, partition and offset its acknowledgement gave.
A stored mark (`schemas.marks`) of the same cluster confirms every entry of its partition
below the mark. Entries of another cluster (a broker that restarted empty) will never be
confirmed: `take_others` hands them back to be sent again.

A mark also names gaps: offsets below it the worker passed without reading (the broker lost
what it had acknowledged there). An entry in a gap is handed back to be sent again.

An offset acknowledged twice by one cluster means its broker rewrote its log: two batches
were given the same offsets (seen on an embedded broker whose topic was created while a
producer's batches were auto-creating it), so one of them is not in the log whatever a mark
says. `add` reports it (`Settled.rewritten`) and `take_cluster` hands back what that
cluster has not confirmed, to be sent again.

A `Ticket` follows a group of records (an HTTP batch, a chunk read from the spool) and is
done when all are confirmed; records handed back to be sent again leave their ticket undone
for good. The records of a durable ticket are kept elsewhere (the spool) and never handed
back: their owner reads them again.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
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
class Settled:
    """What a mark (or an acknowledgement a mark had passed already) settled."""

    confirmed: int = 0
    done: list[Ticket] = field(default_factory=list)  # tickets now complete
    lost: list[Record] = field(default_factory=list)  # in a gap: to send again
    rewritten: bool = False  # an offset acknowledged twice: the broker rewrote its log


Gaps = Sequence[tuple[int, int]]


def _in(gaps: Gaps, offset: int) -> bool:
    return any(first <= offset <= last for first, last in gaps)


class Offsets:
    """A set of offsets kept as sorted, disjoint, inclusive ranges (acknowledgements come in
    runs, so a partition's set stays a few ranges). Bounded: past MAX_RANGES the lowest
    range is forgotten (other producers' batches interleave with ours on a shared log)."""

    __slots__ = ("_starts", "_ends")
    MAX_RANGES = 4096

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, offset: int) -> bool:
        """Add `offset`; False if it was there already."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset <= self._ends[i]:
            return False
        joins_left = i >= 0 and self._ends[i] == offset - 1
        joins_right = i + 1 < len(self._starts) and self._starts[i + 1] == offset + 1
        if joins_left and joins_right:
            self._ends[i] = self._ends[i + 1]
            del self._starts[i + 1], self._ends[i + 1]
        elif joins_left:
            self._ends[i] = offset
        elif joins_right:
            self._starts[i + 1] = offset
        else:
            self._starts.insert(i + 1, offset)
            self._ends.insert(i + 1, offset)
            if len(self._starts) > self.MAX_RANGES:
                del self._starts[0], self._ends[0]
        return True

    def __len__(self) -> int:
        return len(self._starts)


@dataclass
class Unconfirmed:
    """Acknowledged records per (cluster, partition), in acknowledgement order."""

    _by: dict[tuple[str, int], deque[_Entry]] = field(default_factory=dict)
    _marks: dict[tuple[str, int], tuple[int, Gaps]] = field(default_factory=dict)
    _acked: dict[tuple[str, int], Offsets] = field(default_factory=dict)
    count: int = 0

    def __len__(self) -> int:
        return self.count

    def add(
        self, cluster: str, acks: Iterable[tuple[int, int, Record]], ticket: Ticket | None = None
    ) -> Settled:
        """Keep `(partition, offset, record)` acknowledgements of `cluster`; those a mark
        already passed are settled at once. An offset the cluster acknowledged before sets
        `rewritten` (the entries are kept: `take_cluster` hands them back)."""
        out = Settled()
        for partition, offset, record in acks:
            key = (cluster, partition)
            acked = self._acked.get(key)
            if acked is None:
                acked = self._acked[key] = Offsets()
            if not acked.add(offset):
                out.rewritten = True
            mark, gaps = self._marks.get(key, (0, ()))
            entry = _Entry(offset, record, ticket)
            if offset < mark and not out.rewritten:
                self._settle(entry, gaps, out)
                continue
            entries = self._by.get(key)
            if entries is None:
                entries = self._by[key] = deque()
            entries.append(entry)
            self.count += 1
        if ticket is not None and ticket.done and ticket not in out.done:
            out.done.append(ticket)
        return out

    def mark(self, cluster: str, partition: int, next_offset: int, gaps: Gaps = ()) -> Settled:
        """A stored mark: every entry of the partition below `next_offset` is stored, but
        those in `gaps` (offsets the worker passed without reading: to send again)."""
        out = Settled()
        key = (cluster, partition)
        if next_offset <= self._marks.get(key, (0, ()))[0]:
            return out
        self._marks[key] = (next_offset, tuple(gaps))
        entries = self._by.get(key)
        if not entries:
            return out
        kept: deque[_Entry] = deque()
        for entry in entries:  # usually a prefix, but a straggler may sit after a later one
            if entry.offset < next_offset:
                self._settle(entry, gaps, out)
            else:
                kept.append(entry)
        if kept:
            self._by[key] = kept
        else:
            del self._by[key]
        self.count -= len(entries) - len(kept)
        return out

    @staticmethod
    def _settle(entry: _Entry, gaps: Gaps, out: Settled) -> None:
        ticket = entry.ticket
        if _in(gaps, entry.offset):
            if ticket is not None:
                ticket.lost = True
            if ticket is None or not ticket.durable:
                out.lost.append(entry.record)
            return
        out.confirmed += 1
        if ticket is not None:
            ticket.confirmed += 1
            if ticket.done:
                out.done.append(ticket)

    def take_others(self, cluster: str) -> list[Record]:
        """Every record acknowledged by another cluster than `cluster` (to send again; those
        of a durable ticket are dropped, their owner reads them again), and forget the other
        clusters' marks."""
        out: list[Record] = []
        for key in [k for k in self._by if k[0] != cluster]:
            out.extend(self._take(key))
        for key in [k for k in self._marks if k[0] != cluster]:
            del self._marks[key]
        for key in [k for k in self._acked if k[0] != cluster]:
            del self._acked[key]
        return out

    def take_cluster(self, cluster: str) -> list[Record]:
        """Every record `cluster` acknowledged and did not confirm (to send again, but those
        of a durable ticket), and forget its marks and offsets: its log was rewritten, and
        what it acknowledges from now on is judged afresh."""
        out: list[Record] = []
        for key in [k for k in self._by if k[0] == cluster]:
            out.extend(self._take(key))
        for table in (self._marks, self._acked):
            for key in [k for k in table if k[0] == cluster]:
                del table[key]
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
