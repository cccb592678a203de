"""One partition's batch, start to finish, as pure functions: decode, dedup, price, aggregate.

`process()` reads the partition state and returns what the batch would change; nothing is
applied until the sink has stored the rows, then `apply()` folds the result into the state.
A batch that fails to store can therefore be retried as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.events import Event, InvalidEvent, SessionEnded, SessionStarted, parse_event
from schemas.prices import PriceBook
from tally.domain import counters
from tally.domain.counters import CounterKey
from tally.domain.usage import measure

EVENT_COLUMNS = (
    "org_id",
    "event_id",
    "type",
    "ts",
    "agent_id",
    "run_id",
    "session_id",
    "key_mode",
    "line_item",
    "item",
    "quantity",
    "billable",
    "cost_micros",
    "priced",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "mode",
    "tool",
    "success",
    "cache_hit",
    "partition",
    "offset",
    "ingested_at",
    "log_epoch",
)

STARTED, ENDED = 1, 2


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka message as the worker sees it."""

    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    error: str
    partition: int
    offset: int


@dataclass(slots=True)
class PartitionState:
    """Everything the worker keeps for one partition; rebuilt from the store on assignment."""

    partition: int
    next_offset: int = 0
    counters: dict[CounterKey, int] = field(default_factory=dict)
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

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
    rows: list[list[object]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    deltas: dict[CounterKey, int] = field(default_factory=dict)
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    ingested_at: float = 0.0


def process(
    state: PartitionState, records: Iterable[Record], book: PriceBook, now: datetime, log_epoch: str
) -> BatchResult:
    ingested = now.astimezone(UTC)
    result = BatchResult(state.partition, state.next_offset - 1, ingested_at=ingested.timestamp())
    batch_ids: set[str] = set()
    for record in records:
        result.last_offset = record.offset
        try:
            if record.value is None:
                raise InvalidEvent("message has no value")
            event = parse_event(record.value)
        except InvalidEvent as exc:
            dead = DeadLetter(record.value or b"", exc.reason, state.partition, record.offset)
            result.dead.append(dead)
            continue
        if event.event_id in state.seen or event.event_id in batch_ids:
            result.duplicates += 1
            continue
        batch_ids.add(event.event_id)
        result.event_ids.append(event.event_id)
        _add(result, event, book, record.offset, ingested, log_epoch, state)
    return result


def _add(
    result: BatchResult,
    event: Event,
    book: PriceBook,
    offset: int,
    ingested: datetime,
    log_epoch: str,
    state: PartitionState,
) -> None:
    usage = measure(event, book)
    for key, delta in counters.deltas(event.org_id, event.ts, usage):
        result.deltas[key] = result.deltas.get(key, 0) + delta
    if isinstance(event, SessionStarted | SessionEnded) and event.key_mode == "live":
        sk = (event.org_id, event.session_id)
        bit = STARTED if isinstance(event, SessionStarted) else ENDED
        before = result.sessions.get(sk, state.sessions.get(sk, 0))
        result.sessions[sk] = before | bit
    llm = getattr(event, "input_tokens", None) is not None
    result.rows.append(
        [
            event.org_id,
            event.event_id,
            event.type,
            event.ts,
            event.agent_id,
            event.run_id or "",
            event.session_id or "",
            event.key_mode,
            usage.line_item,
            usage.item,
            usage.quantity,
            usage.billable,
            usage.cost_micros,
            int(usage.priced),
            getattr(event, "input_tokens", 0) if llm else 0,
            getattr(event, "output_tokens", 0) if llm else 0,
            getattr(event, "cached_input_tokens", 0) if llm else 0,
            getattr(event, "mode", ""),
            getattr(event, "tool", ""),
            int(getattr(event, "success", True)),
            int(getattr(event, "cache_hit", False)),
            result.partition,
            offset,
            ingested,
            log_epoch,
        ]
    )


def active(flags: int) -> bool:
    return flags == STARTED


def apply(state: PartitionState, result: BatchResult) -> dict[CounterKey, int]:
    """Fold a stored batch into the state; return the absolute value of every changed key."""
    changed: dict[CounterKey, int] = {}
    for key, delta in result.deltas.items():
        value = state.counters.get(key, 0) + delta
        state.counters[key] = value
        changed[key] = value
    for sk, flags in result.sessions.items():
        before = state.sessions.get(sk, 0)
        if flags == STARTED | ENDED:
            state.sessions.pop(sk, None)  # finished: nothing left to remember
        else:
            state.sessions[sk] = flags
        step = int(active(flags)) - int(active(before))
        if step:
            key = (sk[0], counters.SESSIONS, 0)
            value = state.counters.get(key, 0) + step
            state.counters[key] = value
            changed[key] = value
    for event_id in result.event_ids:
        state.seen[event_id] = result.ingested_at
    state.next_offset = max(state.next_offset, result.last_offset + 1)
    return changed
