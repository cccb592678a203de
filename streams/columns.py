"""A fetch of the common shape, a column at a time: the worker's hot path.

`process()` computes what `streams.batch.process` (the definition, an event at a time)
computes, for a whole fetch at once: msgspec reads each message into the wire structs of
`streams.decode`, their fields become columns, and the checks, prices, counters and the rows
to store are worked out over the columns by Arrow's compute functions instead of event by
event in the interpreter. LLM usage, tool calls and gateway requests (nearly every event) go
this way; the sessions and storage events of a fetch go through `batch.count` one at a time.

It takes a fetch only when every message in it is one `streams.decode`'s fast path takes, of
an org that maps to this partition, with a `ts` the event-time policy takes without a look at
the message's headers (neither too old nor too far in the future), when each model and
connector has one rate in force from the fetch's earliest event on, and when the sums fit in
64 bits. Any other fetch goes to `batch.process` whole, which dead-letters, forwards and
prices it event by event: the result is the same either way (tests/unit/test_columns.py).
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from schemas.events import TS_MAX, TS_MIN, InvalidEvent
from streams import batch, leases, runs
from streams.batch import BatchResult, Message, PartitionState
from streams.column_meters import Common, Slow, all_true, constant, llm, request, tool
from streams.decode import (
    WireGatewayRequest,
    WireLlmUsage,
    WireToolCall,
    decode,
    known_id,
    wire,
)
from streams.rows import EVENT_COLUMNS, EVENT_SCHEMA, event_block
from tally.domain import counters
from tally.domain.counters import CounterKey
from tally.domain.eventtime import DEFAULT, EventTime
from tally.domain.partitioning import partition_of
from tally.domain.pricing import Pricer, RateChanges, micros

# What `streams.decode` checks event by event, as patterns over a column: an id is 1 to 128
# printable ASCII characters (msgspec checks the length), a time has the RFC 3339 form the
# fast path's `_time` takes (a `T` or a space, `Z` or an offset, 1 to 9 digits of fraction).
_ID_FORM = r"^[!-~]+$"
_TIME_FORM = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
_NS, _US = pa.timestamp("ns", tz="UTC"), pa.timestamp("us", tz="UTC")
_US_PER_MINUTE = 60_000_000
_MINUTES_PER_DAY = 1_440
_US_PER_DAY = _US_PER_MINUTE * _MINUTES_PER_DAY
# A column summed must stay below this: Arrow sums 64-bit integers without a check.
_SUM_LIMIT = 1 << 62
COLUMNS_FROM = 400

# The types taken a column at a time, by code; the others (sessions, storage) are code 3 and
# a duplicate is code 4.
_KINDS = (WireLlmUsage, WireToolCall, WireGatewayRequest)
_CODE: dict[Any, int] = {kind: code for code, kind in enumerate(_KINDS)}
_OTHER, _DUPLICATE = 3, 4
_LINE_ITEM = {WireLlmUsage: "llm", WireToolCall: "tool_calls", WireGatewayRequest: "requests"}
# A row's value for a field its type does not carry (as `batch.count` has it).
_ABSENT = {
    "input_tokens": (0, pa.uint64()),
    "output_tokens": (0, pa.uint64()),
    "cached_input_tokens": (0, pa.uint64()),
    "mode": ("", pa.string()),
    "provider": ("", pa.string()),
    "tool": ("", pa.string()),
    "success": (1, pa.uint8()),
    "cache_hit": (0, pa.uint8()),
}


def process(
    state: PartitionState,
    records: Iterable[Message],
    pricer: Pricer,
    now: datetime,
    log_epoch: str,
    pending: Sequence[BatchResult] = (),
    event_time: EventTime = DEFAULT,
) -> BatchResult:
    """`batch.process`, a column at a time for a fetch of the common shape of at least
    COLUMNS_FROM events (a column at a time costs about 3 ms a fetch more, and 8-10 us an
    event less: fewer events cost less one at a time)."""
    records = records if isinstance(records, list) else list(records)
    result = (
        take(state, records, pricer, now, log_epoch, pending, event_time)
        if len(records) >= COLUMNS_FROM
        else None
    )
    if result is None:
        return batch.process(state, records, pricer, now, log_epoch, pending, event_time)
    return result


def take(
    state: PartitionState,
    records: Sequence[Message],
    pricer: Pricer,
    now: datetime,
    log_epoch: str,
    pending: Sequence[BatchResult] = (),
    event_time: EventTime = DEFAULT,
) -> BatchResult | None:
    """The batch's result computed a column at a time, or None if it is not of the common
    shape (nothing is changed then)."""
    if not records:
        return None
    try:
        return _columns(state, records, pricer, now.astimezone(UTC), log_epoch, pending, event_time)
    except (Slow, RateChanges, pa.ArrowInvalid):
        # ArrowInvalid: a time that names no instant (Feb 30, 24:00) or a product that
        # overflows 64 bits; the definition explains or computes it with Python's integers.
        return None


def _columns(
    state: PartitionState,
    records: Sequence[Message],
    pricer: Pricer,
    now: datetime,
    log_epoch: str,
    pending: Sequence[BatchResult],
    event_time: EventTime,
) -> BatchResult:
    try:
        events = [wire(r.value) for r in records]  # type: ignore[arg-type]
    except (msgspec.MsgspecError, ValueError, TypeError):  # refused, not JSON, no value
        raise Slow from None
    if any(e.reservation_id is not None for e in events):
        raise Slow  # reservations are settled in log order, event by event
    ids = [e.event_id for e in events]
    id_column = pa.array(ids, pa.string())
    orgs = pa.array([e.org_id for e in events], pa.string())
    agents = pa.array([e.agent_id for e in events], pa.string())
    runs = pa.array([e.run_id for e in events], pa.string())
    sessions = pa.array([e.session_id for e in events], pa.string())
    time_text = pa.array([e.ts for e in events], pa.string())
    org_ids = pc.unique(orgs).to_pylist()
    if state.partitions and any(
        partition_of(org, state.partitions) != state.partition for org in org_ids
    ):
        raise Slow  # forwarded event by event
    if state.closed and not state.closed.isdisjoint(org_ids):
        raise Slow  # dead-lettered event by event
    # Orgs, agents, runs and sessions repeat: their few distinct values are checked.
    for values in (org_ids, *(pc.unique(c).to_pylist() for c in (agents, runs, sessions))):
        if not all(known_id(v) for v in values if v is not None):
            raise Slow
    if not all_true(pc.match_substring_regex(id_column, _ID_FORM)) or not all_true(
        pc.match_substring_regex(time_text, _TIME_FORM)
    ):
        raise Slow
    ts = time_text.cast(_NS).cast(_US, safe=False)  # fractions truncated, as Python does
    ts_us = ts.cast(pa.int64())
    lo, hi = pc.min_max(ts_us).values()
    if lo.as_py() < micros(TS_MIN) or hi.as_py() >= micros(TS_MAX):
        raise Slow
    # An event the policy refuses, or takes only for its backfill header, is the definition's.
    oldest, newest = event_time.bounds(now)
    if lo.as_py() < micros(oldest) or hi.as_py() > micros(newest):
        raise Slow

    result = batch.begin(state, now, log_epoch, pending)
    duplicates = _duplicates(ids, state.seen, batch.earlier_ids(pending), result.event_ids)
    result.duplicates = len(duplicates)
    codes = [_CODE.get(type(e), _OTHER) for e in events]
    for i in duplicates:
        codes[i] = _DUPLICATE
    code_column = pa.array(codes, pa.int8())
    others = pc.indices_nonzero(pc.equal(code_column, _OTHER)).to_pylist()
    # A duplicate is not counted, but one the contract refuses is a dead letter: the few
    # duplicates are checked by the definition's decoder, which decodes the others too.
    decoded = {}
    for i in [*duplicates, *others]:
        try:
            decoded[i] = decode(records[i].value)
        except InvalidEvent:
            raise Slow from None

    common = Common(
        id_column,
        orgs,
        agents,
        pc.fill_null(runs, ""),
        pc.fill_null(sessions, ""),
        pa.array([e.key_mode for e in events], pa.string()),
        ts,
        ts_us,
        pa.array([r.offset for r in records], pa.uint64()),
    )
    ingested = pc.fill_null(pa.nulls(len(records), _US), pa.scalar(now, _US))
    blocks = []
    pieces: list[tuple[Common, dict[str, pa.Array]]] = []
    for code, kind in enumerate(_KINDS):
        rows = pc.indices_nonzero(pc.equal(code_column, code))
        if len(rows):
            of_kind = [events[i] for i in rows.to_pylist()]
            part = common.take(rows)
            make = llm if kind is WireLlmUsage else tool if kind is WireToolCall else request
            meters, columns = make(part, of_kind, pricer)
            pieces.append((part, meters))
            n = len(part.org)
            for name, (value, type_) in _ABSENT.items():
                if name not in columns:
                    columns[name] = constant(value, type_, n)
            tag = str(kind.__struct_config__.tag)
            columns.update(
                type=constant(tag, pa.string(), n),
                line_item=constant(_LINE_ITEM[kind], pa.string(), n),
                org_id=part.org,
                event_id=part.event_id,
                ts=part.ts,
                agent_id=part.agent,
                run_id=part.run,
                session_id=part.session,
                key_mode=part.key_mode,
                partition=constant(state.partition, pa.uint16(), n),
                offset=part.offset,
                ingested_at=ingested.slice(0, n),
                log_epoch=constant(log_epoch, pa.string(), n),
            )
            blocks.append(
                pa.Table.from_arrays([columns[c] for c in EVENT_COLUMNS], schema=EVENT_SCHEMA)
            )
            result.types[tag] = result.types.get(tag, 0) + n
    if pieces:
        _count(result.deltas, pieces, len(records))
    _sessions(result, state, pending, records, events, codes, decoded, others, ts_us, pricer, now)
    _runs(result, state, pending, common, code_column, now)
    if result.rows:
        blocks.append(event_block(result.rows))
        result.rows = []
    result.block = pa.concat_tables(blocks) if blocks else None
    last = records[-1]
    result.last_offset = last.offset
    result.last_crc = zlib.crc32(last.value or b"")
    return result


def _sessions(
    result: BatchResult,
    state: PartitionState,
    pending: Sequence[BatchResult],
    records: Sequence[Message],
    events: list[Any],
    codes: list[int],
    decoded: dict[int, dict[str, Any]],
    others: list[int],
    ts_us: pa.Array,
    pricer: Pricer,
    now: datetime,
) -> None:
    """Sessions and storage event by event in offset order, with the lease renewals of the
    live events taken a column at a time: as `batch.count` has them, one at a time, for a
    session that starts or ends in the fetch; once, at the latest event time, for the
    others (whether they are open does not change within the fetch)."""
    moving = {(d["org_id"], d["session_id"]) for i in others if (d := decoded[i])["session_id"]}
    interleaved: list[int] = []
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    times = ts_us.to_pylist()
    for i, e in enumerate(events):
        if e.session_id is None or codes[i] >= _OTHER or e.key_mode != "live":
            continue
        sk = (e.org_id, e.session_id)
        if sk in moving:
            interleaved.append(i)
        elif sk not in latest or times[i] > latest[sk][0]:
            latest[sk] = (times[i], latest[sk][1] if sk in latest else i)
    for i in heapq.merge(others, interleaved):
        if codes[i] == _OTHER:
            batch.count(result, state, pending, decoded[i], records[i].offset, pricer, now)
        else:
            e = events[i]
            when = _EPOCH + timedelta(microseconds=times[i])
            leases.renew(
                result, state, pending, (e.org_id, e.session_id), when, e.agent_id, e.run_id or ""
            )
    for sk, (at, first) in latest.items():
        e = events[first]
        when = _EPOCH + timedelta(microseconds=at)
        leases.renew(result, state, pending, sk, when, e.agent_id, e.run_id or "")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _runs(
    result: BatchResult,
    state: PartitionState,
    pending: Sequence[BatchResult],
    common: Common,
    codes: pa.Array,
    now: datetime,
) -> None:
    """The runs meter of the events taken a column at a time, as `batch.count` has it one
    at a time: once per distinct org, run and day of their live events (the others went
    through `batch.count`). The order does not matter: the counters are a function of each
    run's set of active days."""
    mask = pc.and_(
        pc.and_(pc.less(codes, _OTHER), pc.equal(common.key_mode, "live")),
        pc.not_equal(common.run, ""),
    )
    if not pc.any(mask).as_py():
        return
    distinct = (
        pa.table(
            {
                "org": common.org.filter(mask),
                "run": common.run.filter(mask),
                "day": pc.divide(common.ts_us.filter(mask), _US_PER_DAY),
            }
        )
        .group_by(["org", "run", "day"])
        .aggregate([])
    )
    orgs, run_ids, days = (distinct.column(c).to_pylist() for c in ("org", "run", "day"))
    events = zip(orgs, run_ids, days, strict=True)
    runs.arrive(result, state, pending, events, counters.first_kept_day(now))


def _duplicates(
    ids: list[str], seen: dict[str, float], earlier: set[str] | tuple[()], new: set[str]
) -> list[int]:
    """The positions of events seen before (in the dedup window, the batches before, or
    earlier in this one: the first copy counts); the others' ids are added to `new`."""
    unique = set(ids)
    if len(unique) == len(ids) and seen.keys().isdisjoint(unique) and unique.isdisjoint(earlier):
        new.update(unique)
        return []
    duplicates = []
    for i, event_id in enumerate(ids):
        if event_id in seen or event_id in new or event_id in earlier:
            duplicates.append(i)
        else:
            new.add(event_id)
    return duplicates


_METERS = (
    counters.TOKENS,
    counters.COST_PREFIX + "llm",
    counters.UPSTREAM_COST,
    counters.UNPRICED,
    counters.TOOL_CALLS,
    counters.COST_PREFIX + "tool_calls",
    counters.REQUESTS,
)


def _count(
    deltas: dict[CounterKey, int], pieces: list[tuple[Common, dict[str, pa.Array]]], n: int
) -> None:
    """Add each meter's sums to `deltas`, per org and day (requests per org and minute too),
    as `counters.add` does event by event: a key only where some event adds to it (every
    value is non-negative, so a sum is zero only if every value was)."""
    tables = []
    for part, meters in pieces:
        size = len(part.org)
        for values in meters.values():
            top = pc.max(values).as_py()
            if top and top * n >= _SUM_LIMIT:
                raise Slow
        columns = {
            "org": part.org,
            "day": pc.divide(part.ts_us, _US_PER_DAY),
            "minute": pc.divide(part.ts_us, _US_PER_MINUTE)
            if counters.REQUESTS in meters
            else constant(-1, pa.int64(), size),
        }
        for name in _METERS:
            columns[name] = meters[name] if name in meters else constant(0, pa.int64(), size)
        tables.append(pa.table(columns))
    sums = (
        pa.concat_tables(tables)
        .group_by(["org", "day", "minute"])
        .aggregate([(name, "sum") for name in _METERS])
    )
    orgs, days, minutes = (sums.column(c).to_pylist() for c in ("org", "day", "minute"))
    for name in _METERS:
        values = sums.column(f"{name}_sum").to_pylist()
        for org, day, minute, value in zip(orgs, days, minutes, values, strict=True):
            if value:
                keys = (
                    [(org, counters.REQUESTS_MINUTE, minute), (org, name, day)]
                    if name == counters.REQUESTS
                    else [(org, name, day)]
                )
                for key in keys:
                    deltas[key] = deltas.get(key, 0) + value
