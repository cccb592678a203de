"""One partition's batch, start to finish, as pure functions: decode, dedup, price, aggregate.

`process()` reads the partition state and returns what the batch would change; nothing is
applied until the sink has stored the rows, then `apply()` folds the result into the state.
A batch that fails to store can therefore be retried as it is.

An event whose `org_id` maps to another partition of the topic (a producer that does not key
by `org_id`, or one still using the partition count from before an increase) is not counted
here, where its org has no state: it is forwarded to the partition its org maps to, whose
state counts it exactly once (`Forward`).

An event whose `ts` is outside the event-time policy (too old, unless sent as history with a
backfill range that holds it, or too far in the future: tally.domain.eventtime) is a dead
letter with the reason. The policy is judged after the `event_id` dedup: a copy of an event
counted before is a duplicate, however old it has become since.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa

from schemas.events import InvalidEvent
from streams import admissions, runs
from streams.decode import decode
from streams.leases import ENDED, STARTED, session
from tally.domain import counters
from tally.domain.counters import CounterKey
from tally.domain.eventtime import DEFAULT, Backfill, EventTime
from tally.domain.leases import Lease
from tally.domain.partitioning import partition_of
from tally.domain.pricing import Pricer
from tally.domain.reservations import Hold
from tally.domain.runs import Days
from tally.domain.usage import measure

SESSION_BITS = {"session.started": STARTED, "session.ended": ENDED}

# Headers of a forwarded message: where it was first read, and how often it was forwarded.
FORWARDED_FROM, HOPS = "tally-forwarded-from", "tally-hops"
# Workers that agree on the partition count forward a message once; one forwarded again
# after a partition increase makes two. More means workers disagree: dead letter it.
MAX_HOPS = 3

Headers = Sequence[tuple[str, bytes]]


class Message(Protocol):
    """A Kafka message as the worker sees it (aiokafka's records are ones)."""

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Headers: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A message made here (tests, tools)."""

    offset: int
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    error: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Forward:
    """A message to send on to the partition its org maps to, with the headers it carries."""

    value: bytes
    org_id: str
    partition: int  # where it goes
    source: int  # the partition it arrived on
    offset: int
    headers: Headers


@dataclass(slots=True)
class PartitionState:
    """Everything the worker keeps for one partition; rebuilt from the store on assignment."""

    partition: int
    # The topic's partition count the state was built for: it holds the orgs that map to
    # `partition` among `partitions` (see tally.domain.partitioning); 0 checks no keys.
    partitions: int = 0
    next_offset: int = 0
    epoch: str = ""  # the broker log the offsets belong to (see streams/sink.py)
    # (offset, CRC-32) of the message before next_offset, to be read again and compared on
    # resume: a mismatch means the broker's log is not the one the mark was taken on.
    check: tuple[int, int] | None = None
    counters: dict[CounterKey, int] = field(default_factory=dict)
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)
    leases: dict[tuple[str, str], Lease] = field(default_factory=dict)  # of open sessions
    seen: dict[str, float] = field(default_factory=dict)
    # Reservations held per org, and each org's clock: its latest admission request's time.
    holds: dict[str, dict[str, Hold]] = field(default_factory=dict)
    clocks: dict[str, datetime] = field(default_factory=dict)
    # Orgs closed by an admin (`DELETE /api/v2/admin/orgs/{id}`), as the worker last read
    # them from the store: their events are dead-lettered, to be replayed if restored.
    closed: frozenset[str] = frozenset()
    # The live runs of the kept days: `runs.key(org, run_id)` -> its active days
    # (tally.domain.runs), from counters.KEEP_DAYS ago on.
    runs: dict[str, Days] = field(default_factory=dict)

    def expire(self, now: datetime, dedup_window_s: int) -> None:
        """Forget event ids older than the dedup window, counters no read can need and runs
        with no day left that a read can need."""
        self.forget_before(now.timestamp() - dedup_window_s)
        for k in [k for k in self.counters if counters.expired(k, now)]:
            del self.counters[k]
        runs.forget(self.runs, counters.first_kept_day(now))

    def forget_before(self, cutoff: float) -> None:
        """Drop dedup entries remembered before `cutoff` (epoch seconds); oldest come first."""
        stale = []
        for event_id, at in self.seen.items():
            if at >= cutoff:
                break
            stale.append(event_id)
        for event_id in stale:
            del self.seen[event_id]


@dataclass(slots=True)
class BatchResult:
    partition: int
    last_offset: int
    last_crc: int = 0  # CRC-32 of the value at last_offset
    epoch: str = ""
    rows: list[list[object]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    deltas: dict[CounterKey, int] = field(default_factory=dict)
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)
    leases: dict[tuple[str, str], Lease] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)  # sessions ended, by reason (metrics)
    holds: dict[str, dict[str, Hold]] = field(default_factory=dict)  # orgs whose holds changed
    clocks: dict[str, datetime] = field(default_factory=dict)
    reservations: list[list[object]] = field(default_factory=list)  # rows (streams.admissions)
    event_ids: set[str] = field(default_factory=set)
    runs: dict[str, Days] = field(default_factory=dict)  # runs with a new active day
    duplicates: int = 0
    # The ids of `expired` ends the log voided (streams.leases): not stored, so not
    # remembered as seen either (a copy read again is judged again, the same way).
    voided: list[str] = field(default_factory=list)
    ingested_at: float = 0.0
    types: dict[str, int] = field(default_factory=dict)  # stored events by type (metrics)
    block: pa.Table | None = None  # rows made a column at a time (streams.columns)

    @property
    def stored(self) -> int:
        """The events the batch stores."""
        return len(self.rows) + (self.block.num_rows if self.block is not None else 0)


def begin(
    state: PartitionState, now: datetime, log_epoch: str, pending: Sequence[BatchResult]
) -> BatchResult:
    """An empty result for the batch that follows `pending` (or the state's mark)."""
    first = pending[-1].last_offset + 1 if pending else state.next_offset
    return BatchResult(state.partition, first - 1, epoch=log_epoch, ingested_at=now.timestamp())


def earlier_ids(pending: Sequence[BatchResult]) -> set[str] | tuple[()]:
    """The event ids of the batches before this one, to look up once per event."""
    if len(pending) > 1:
        return set().union(*(p.event_ids for p in pending))
    return pending[0].event_ids if pending else ()


def process(
    state: PartitionState,
    records: Iterable[Message],
    pricer: Pricer,
    now: datetime,
    log_epoch: str,
    pending: Sequence[BatchResult] = (),
    event_time: EventTime = DEFAULT,
) -> BatchResult:
    """What a batch changes, given the state and the batches before it that are not yet
    applied (`pending`, oldest first: the worker prepares batches while one is stored), and
    the event-time policy judged at `now`.

    This is the definition, an event at a time; `streams.columns.process` computes the same
    for a fetch of the common shape a column at a time, and hands any other fetch to it."""
    now = now.astimezone(UTC)
    result = begin(state, now, log_epoch, pending)
    partition, partitions = state.partition, state.partitions
    seen, event_ids, earlier = state.seen, result.event_ids, earlier_ids(pending)
    oldest, newest = event_time.bounds(now)
    last: Message | None = None
    for record in records:
        last = record
        try:
            if record.value is None:
                raise InvalidEvent("message has no value")
            event = decode(record.value)
        except InvalidEvent as exc:
            dead = DeadLetter(record.value or b"", exc.reason, partition, record.offset)
            result.dead.append(dead)
            continue
        if partitions and partition_of(event["org_id"], partitions) != partition:
            _misrouted(result, record, event["org_id"], partitions, partition)
            continue
        if event["org_id"] in state.closed:
            refused = closed_org(event["org_id"])
            result.dead.append(DeadLetter(record.value, refused, partition, record.offset))
            continue
        event_id = event["event_id"]
        if event_id in seen or event_id in event_ids or event_id in earlier:
            result.duplicates += 1
            continue
        ts = event["ts"]
        if not oldest <= ts <= newest:
            reason = event_time.refusal(ts, now, Backfill.of(record.headers))
            if reason is not None:
                result.dead.append(DeadLetter(record.value, reason, partition, record.offset))
                continue
        event_ids.add(event_id)
        count(result, state, pending, event, record.offset, pricer, now)
    if last is not None:
        result.last_offset = last.offset
        result.last_crc = zlib.crc32(last.value or b"")
    return result


def closed_org(org_id: str) -> str:
    return (
        f"org_closed: org {org_id!r} is closed, its events are refused; restore it "
        f"(POST /api/v2/admin/orgs/{org_id}/restore) and replay them with `tally dlq`"
    )


def count(
    result: BatchResult,
    state: PartitionState,
    pending: Sequence[BatchResult],
    event: dict[str, Any],
    offset: int,
    pricer: Pricer,
    now: datetime,
) -> None:
    """Add one decoded, routed and new event to `result`: its session and lease, type,
    counters and row (stored at `now`, the batch's time). An `expired` end that the log
    voided (tally.domain.leases) is left out: not stored, nothing counted."""
    org, kind, ts = event["org_id"], event["type"], event["ts"]
    if kind == "admission.requested":  # a decision, not usage: stored as a reservation row
        admissions.decide(result, state, pending, event, offset)
        return
    if (
        event["session_id"]
        and event["key_mode"] == "live"
        and not session(result, state, pending, event)
    ):
        result.voided.append(event["event_id"])
        return
    if event["key_mode"] == "live" and (event["reservation_id"] or kind == "session.started"):
        admissions.settle(result, state, pending, event, offset)
    usage = measure(event, pricer)
    types = result.types
    types[kind] = types.get(kind, 0) + 1
    counters.add(result.deltas, org, ts, usage)
    if event["run_id"] and event["key_mode"] == "live":
        run = ((org, event["run_id"], counters.epoch_day(ts)),)
        runs.arrive(result, state, pending, run, counters.first_kept_day(now))
    get = event.get
    result.rows.append(
        [
            org,
            event["event_id"],
            kind,
            ts,
            event["agent_id"],
            event["run_id"],
            event["session_id"],
            event["key_mode"],
            usage.line_item,
            usage.item,
            usage.quantity,
            usage.billable,
            usage.cost_micros,
            int(usage.priced),
            get("input_tokens", 0),
            get("output_tokens", 0),
            get("cached_input_tokens", 0),
            get("mode", ""),
            get("provider") or "",
            get("tool", ""),
            int(get("success", True)),
            int(get("cache_hit", False)),
            result.partition,
            offset,
            now,
            result.epoch,
        ]
    )


def _misrouted(
    result: BatchResult, record: Message, org_id: str, partitions: int, partition: int
) -> None:
    """Forward an event to its org's partition, or dead-letter it if it keeps moving."""
    target = partition_of(org_id, partitions)
    value = record.value or b""
    hops = 0
    kept: list[tuple[str, bytes]] = []
    for name, header in record.headers:
        if name == HOPS:
            hops = int(header) if header.isdigit() else MAX_HOPS
        elif name != FORWARDED_FROM:
            kept.append((name, header))
    if hops >= MAX_HOPS:
        reason = (
            f"misrouted: org_id {org_id!r} belongs to partition {target} of {partitions}, not"
            f" {partition}, and was forwarded {hops} times already: the workers disagree on the"
            " partition count of usage.events; replay it with `tally dlq replay` once they agree"
        )
        result.dead.append(DeadLetter(value, reason, partition, record.offset))
        return
    kept += [
        (FORWARDED_FROM, f"{partition}/{record.offset}".encode()),
        (HOPS, str(hops + 1).encode()),
    ]
    result.forwards.append(Forward(value, org_id, target, partition, record.offset, kept))


def projected(
    state: PartitionState, result: BatchResult, pending: Sequence[BatchResult] = ()
) -> dict[CounterKey, int]:
    """The counters `result` changes, as they will stand once `pending` (the batches before
    it not yet applied) and `result` are applied: what `apply` will make of them."""
    kept = state.counters
    out = {}
    for key, delta in result.deltas.items():
        value = kept.get(key, 0) + delta
        for before in pending:
            value += before.deltas.get(key, 0)
        out[key] = value
    return out


def active(flags: int) -> bool:
    return flags == STARTED


def apply(state: PartitionState, result: BatchResult) -> dict[CounterKey, int]:
    """Fold a stored batch into the state; return the absolute value of every changed key."""
    changed: dict[CounterKey, int] = {}
    kept = state.counters
    for key, delta in result.deltas.items():
        value = kept.get(key)
        if value is None:  # a new key: share its parts with the other keys
            key, value = counters.key(*key), delta
        else:
            value += delta
        kept[key] = value
        changed[key] = value
    state.leases.update(result.leases)
    state.runs.update(result.runs)
    for sk, flags in result.sessions.items():
        before = state.sessions.get(sk, 0)
        if flags == STARTED | ENDED:
            state.sessions.pop(sk, None)  # finished: nothing left to remember
            state.leases.pop(sk, None)
        else:
            state.sessions[sk] = flags
        step = int(active(flags)) - int(active(before))
        if step:
            key = (sk[0], counters.SESSIONS, 0)
            value = state.counters.get(key, 0) + step
            state.counters[key] = value
            changed[key] = value
    for org, holds in result.holds.items():
        was = admissions.reserved(state.holds.get(org, {}))
        now_held = admissions.reserved(holds)
        for meter in was.keys() | now_held.keys():
            key = (org, counters.RESERVED_PREFIX + meter, 0)
            state.counters[key] = changed[key] = now_held.get(meter, 0)
        if holds:
            state.holds[org] = holds
        else:
            state.holds.pop(org, None)
    state.clocks.update(result.clocks)
    ids = result.event_ids.difference(result.voided) if result.voided else result.event_ids
    state.seen.update(dict.fromkeys(ids, result.ingested_at))
    state.next_offset = max(state.next_offset, result.last_offset + 1)
    return changed
