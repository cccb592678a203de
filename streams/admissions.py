"""Admissions in log order (part of the definition, `streams.batch`; the rules are
tally.domain.reservations).

An `admission.requested` is decided against the org's exact figures at its place in the log:
the partition state, the batches prepared before this one and this batch up to the request.
The decision and every settlement become rows of the `reservations` table, stored with the
batch, from which a rebuilt worker takes the holds back. An org's holds, once a batch changes
them, are copied whole into its result, so the newest layer has all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from streams.leases import ENDED, STARTED
from tally.domain import counters
from tally.domain import reservations as r
from tally.domain.counters import CounterKey
from tally.domain.reservations import Hold


class Layer(Protocol):
    """What admissions read of a partition's state and of each batch prepared on it
    (`streams.batch.PartitionState`, `streams.batch.BatchResult`)."""

    holds: dict[str, dict[str, Hold]]
    clocks: dict[str, datetime]
    sessions: dict[tuple[str, str], int]


class PartitionState(Layer, Protocol):
    counters: dict[CounterKey, int]


class BatchResult(Layer, Protocol):
    partition: int
    epoch: str
    deltas: dict[CounterKey, int]
    reservations: list[list[object]]
    event_ids: set[str]


RESERVATION_COLUMNS = (
    "org_id",
    "reservation_id",
    "meter",
    "amount",
    "limit",
    "used",
    "state",
    "ts",
    "expires_at",
    "partition",
    "offset",
    "log_epoch",
)

_METER_COUNTER = {
    "tokens": counters.TOKENS,
    "tool_calls": counters.TOOL_CALLS,
    "requests": counters.REQUESTS,
    "upstream_cost_micros": counters.UPSTREAM_COST,
}


def holds_of(
    result: BatchResult, pending: Sequence[BatchResult], state: PartitionState, org: str
) -> dict[str, Hold]:
    """The org's holds as they stand, newest layer first."""
    for layer in (result, *reversed(pending)):
        if org in layer.holds:
            return layer.holds[org]
    return state.holds.get(org, {})


def _clock(
    result: BatchResult, pending: Sequence[BatchResult], state: PartitionState, org: str
) -> datetime | None:
    for layer in (result, *reversed(pending)):
        if org in layer.clocks:
            return layer.clocks[org]
    return state.clocks.get(org)


def _used(
    result: BatchResult,
    pending: Sequence[BatchResult],
    state: PartitionState,
    event: dict[str, Any],
) -> int:
    """The meter's exact figure at this point of the log."""
    org, meter = event["org_id"], event["meter"]
    if meter == "sessions":
        return max(_sessions(result, pending, state, org), 0)
    name = _METER_COUNTER[meter]
    first = counters.epoch_day(event["window_start"])
    last = counters.epoch_day(event["window_end"]) - 1
    total = 0
    for day in range(first, last + 1):
        key = (org, name, day)
        total += state.counters.get(key, 0)
        for layer in (*pending, result):
            total += layer.deltas.get(key, 0)
    return total


def _sessions(
    result: BatchResult, pending: Sequence[BatchResult], state: PartitionState, org: str
) -> int:
    """Sessions open: the state's count, moved by the sessions the layers started or ended."""
    count = state.counters.get((org, counters.SESSIONS, 0), 0)
    before: dict[tuple[str, str], int] = {}
    for layer in (*pending, result):
        for sk, flags in layer.sessions.items():
            if sk[0] != org:
                continue
            prior = before.get(sk, state.sessions.get(sk, 0))
            count += int(flags == STARTED) - int(prior == STARTED)
            before[sk] = 0 if flags == STARTED | ENDED else flags
    return count


def decide(
    result: BatchResult,
    state: PartitionState,
    pending: Sequence[BatchResult],
    event: dict[str, Any],
    offset: int,
) -> None:
    """Decide an admission request where it stands in the log, and record the decision."""
    org, rid, ts = event["org_id"], event["reservation_id"], event["ts"]
    # Not remembered as seen: the dedup window is rebuilt from stored events, and a request
    # is none. A copy read again is decided again: held already, it is admitted once.
    result.event_ids.discard(event["event_id"])
    known = _clock(result, pending, state, org)
    clock = ts if known is None or ts > known else known
    verdict = r.admit(
        holds_of(result, pending, state, org),
        rid,
        event["meter"],
        event["amount"],
        event["limit"],
        _used(result, pending, state, event),
        clock,
        event["expires_at"],
    )
    result.holds[org] = verdict.holds
    result.clocks[org] = clock
    state_name = r.HELD if verdict.allowed else r.REFUSED
    result.reservations.append(
        _row(result, event, state_name, verdict.used, event["expires_at"], offset)
    )


def settle(
    result: BatchResult,
    state: PartitionState,
    pending: Sequence[BatchResult],
    event: dict[str, Any],
    offset: int,
) -> None:
    """Release the reservation a live event settles, if any."""
    org = event["org_id"]
    holds = holds_of(result, pending, state, org)
    if not holds:
        return
    rid = r.settles(holds, event["reservation_id"], event["type"] == "session.started")
    if rid is None:
        return
    kept = dict(holds)
    hold = kept.pop(rid)
    result.holds[org] = kept
    row = _row(result, event, r.SETTLED, 0, hold.expires_at, offset)
    row[1], row[2], row[3] = rid, hold.meter, hold.amount
    result.reservations.append(row)


def _row(
    result: BatchResult,
    event: dict[str, Any],
    state: str,
    used: int,
    expires: datetime,
    offset: int,
) -> list[object]:
    return [
        event["org_id"],
        event["reservation_id"],
        event.get("meter", ""),
        event.get("amount", 0),
        event.get("limit", 0),
        used,
        state,
        event["ts"],
        expires,
        result.partition,
        offset,
        result.epoch,
    ]


def reserved(holds: dict[str, Hold]) -> dict[str, int]:
    """The amount held per meter (for the `reserved.<meter>` counters quota reads show)."""
    out: dict[str, int] = {}
    for h in holds.values():
        out[h.meter] = out.get(h.meter, 0) + h.amount
    return out


def show_lapses(states: Iterable[PartitionState], now: datetime) -> dict[CounterKey, int]:
    """Set the `reserved.<meter>` counters (what quota reads show; decisions use the holds)
    of orgs holding a reservation whose time has passed to what is still in force at `now`,
    and return those that changed. A lapse takes effect in the decisions with the org's next
    request, in log order; in what reads show, at once."""
    out: dict[CounterKey, int] = {}
    for state in states:
        for org, holds in state.holds.items():
            if all(h.expires_at > now for h in holds.values()):
                continue
            live = reserved(r.lapse(holds, now))
            for meter in reserved(holds):
                key = (org, counters.RESERVED_PREFIX + meter, 0)
                value = live.get(meter, 0)
                if state.counters.get(key) != value:
                    state.counters[key] = out[key] = value
    return out
