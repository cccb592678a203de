"""Fast decoding of wire events for the worker's hot path.

`decode()` parses and checks the common, valid shape with msgspec (a JSON decoder that
checks types and bounds in C as it parses), which costs a microsecond or two instead of a
full pydantic validation. It accepts only what the pydantic models in `schemas.events`
accept (a strict subset: anything unusual falls through), and everything it does not accept
goes through `parse_event()`, so that a refused message gets exactly the contract's error
message. Both paths return the same flat dict.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from schemas.events import (
    MAX_BYTE_SECONDS,
    MAX_ID_LENGTH,
    MAX_TOKENS,
    SCHEMA_VERSION,
    TS_MAX,
    TS_MIN,
    Event,
    parse_event,
)

FIELDS = {
    "llm.usage": (
        "model",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "mode",
        "provider",
    ),
    "tool.call": ("connector", "tool", "success"),
    "gateway.request": ("model", "cache_hit", "mode"),
    "session.started": (),
    "session.heartbeat": (),
    "session.ended": ("reason", "last_seen_at"),
    "storage.usage": ("kind", "byte_seconds"),
    "admission.requested": (
        "meter",
        "amount",
        "limit",
        "window_start",
        "window_end",
        "expires_at",
    ),
}
_fromisoformat = datetime.fromisoformat
_ENVELOPE = (
    "event_id",
    "org_id",
    "agent_id",
    "run_id",
    "session_id",
    "reservation_id",
    "key_mode",
    "ts",
    "type",
)

# The wire shapes, as msgspec checks them while parsing. Ids are checked against the
# contract's pattern below (most repeat from event to event), times by the contract's
# RFC 3339 expression; what msgspec refuses, pydantic judges and explains.
_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
_Mode = Literal["managed", "byok"]


# gc=False: the structs hold only strings, numbers and booleans, so they can be in no cycle.
# Allocated for the collector (as msgspec does otherwise, untracking them after), each one
# counts towards the next collection: with Python's default thresholds a drain of 300,000
# events made 724 young and 6 full collections (0.22 s), without it 390 and 3 (0.15 s).
# (Under `tune_gc()`'s thresholds, as Tally's processes run, one young collection either way.)
class WireEnvelope(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    event_id: _Id
    org_id: _Id
    agent_id: _Id
    run_id: _Id | None = None
    session_id: _Id | None = None
    reservation_id: _Id | None = None
    key_mode: Literal["live", "test"]
    ts: str
    schema_version: Annotated[int, msgspec.Meta(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)] = (
        SCHEMA_VERSION
    )


class WireLlmUsage(WireEnvelope, tag="llm.usage"):
    model: _Name
    input_tokens: _Count
    output_tokens: _Count
    cached_input_tokens: _Count = 0
    mode: _Mode = "managed"
    provider: _Name | None = None


class WireToolCall(WireEnvelope, tag="tool.call"):
    connector: _Name
    tool: _Name
    success: bool


class WireGatewayRequest(WireEnvelope, tag="gateway.request"):
    model: _Name
    cache_hit: bool = False
    mode: _Mode = "managed"


class WireSessionStarted(WireEnvelope, tag="session.started"):
    session_id: _Id


class WireSessionHeartbeat(WireEnvelope, tag="session.heartbeat"):
    session_id: _Id


class WireSessionEnded(WireEnvelope, tag="session.ended"):
    session_id: _Id
    reason: Literal["ended", "expired", "ended_by_api"] = "ended"
    last_seen_at: str | None = None


class WireStorageUsage(WireEnvelope, tag="storage.usage"):
    kind: Literal["knowledge_base", "traces"]
    byte_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_BYTE_SECONDS)]


# The common shapes of the wire, as msgspec structs (what `streams.columns` reads too).
wire = msgspec.json.Decoder(
    WireLlmUsage
    | WireToolCall
    | WireGatewayRequest
    | WireSessionStarted
    | WireSessionHeartbeat
    | WireSessionEnded
    | WireStorageUsage
).decode


class _Slow(Exception):
    """Not the common shape: let pydantic decide and explain."""


# The contract's Id: 1 to 128 printable ASCII characters, no space.
_ID = re.compile(r"[!-~]{1,128}").fullmatch
# Ids that repeat from event to event (orgs, agents, runs, sessions), already checked.
_known: set[str] = set()
_KNOWN_MAX = 1 << 16


def known_id(value: str) -> bool:
    """Whether `value` has the contract's form of an id (remembered for the ids that repeat)."""
    if value in _known:
        return True
    if not _ID(value):
        return False
    if len(_known) >= _KNOWN_MAX:
        _known.clear()
    _known.add(value)
    return True


def _id(value: str) -> str:
    if not known_id(value):
        raise _Slow
    return value


def _time(ts: str) -> datetime:
    """`ts` parsed, if it has the contract's RFC 3339 form: `fromisoformat` and a check of
    the positions it is lenient about, cheaper than the contract's regular expression.
    Anything else (a `t` or `z` in lower case, a digit outside ASCII) is the slow path's."""
    n = len(ts)
    if (
        not 20 <= n <= 35
        or ts[4] != "-"
        or ts[7] != "-"
        or ts[10] not in "T "
        or ts[13] != ":"
        or ts[16] != ":"
        or not ts.isascii()
    ):
        raise _Slow
    try:
        when = _fromisoformat(ts)
    except ValueError:
        raise _Slow from None
    if ts[-1] == "Z":
        end = n - 1
    elif ts[-6] in "+-" and ts[-3] == ":":
        end = n - 6
    else:
        raise _Slow
    # Seconds end at 19; a fraction is a dot and 1 to 9 digits.
    if end != 19 and (ts[19] != "." or not 21 <= end <= 29 or not ts[20:end].isdigit()):
        raise _Slow
    return when


def _fast(raw: bytes) -> dict[str, Any]:
    try:
        event = wire(raw)
    except (msgspec.MsgspecError, ValueError):  # refused, not JSON, or not UTF-8
        raise _Slow from None
    when = _time(event.ts)
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC)
    if not TS_MIN <= when < TS_MAX or not _ID(event.event_id):
        raise _Slow
    run_id, session_id, rid = event.run_id, event.session_id, event.reservation_id
    if rid is not None and not _ID(rid):  # unique: not remembered with the ids that repeat
        raise _Slow
    out = {
        "event_id": event.event_id,
        "org_id": _id(event.org_id),
        "agent_id": _id(event.agent_id),
        "run_id": "" if run_id is None else _id(run_id),
        "session_id": "" if session_id is None else _id(session_id),
        "reservation_id": rid or "",
        "key_mode": event.key_mode,
        "ts": when,
    }
    if type(event) is WireLlmUsage:
        if event.cached_input_tokens > event.input_tokens:
            raise _Slow
        out["type"] = "llm.usage"
        out["model"] = event.model
        out["input_tokens"] = event.input_tokens
        out["output_tokens"] = event.output_tokens
        out["cached_input_tokens"] = event.cached_input_tokens
        out["mode"] = event.mode
        out["provider"] = event.provider
    elif type(event) is WireToolCall:
        out["type"] = "tool.call"
        out["connector"] = event.connector
        out["tool"] = event.tool
        out["success"] = event.success
    elif type(event) is WireGatewayRequest:
        out["type"] = "gateway.request"
        out["model"] = event.model
        out["cache_hit"] = event.cache_hit
        out["mode"] = event.mode
    elif type(event) is WireStorageUsage:
        out["type"] = "storage.usage"
        out["kind"] = event.kind
        out["byte_seconds"] = event.byte_seconds
    elif type(event) is WireSessionEnded:
        out["type"] = "session.ended"
        out["reason"] = event.reason
        seen = event.last_seen_at
        if seen is None:
            if event.reason == "expired":
                raise _Slow  # the contract explains what is missing
            out["last_seen_at"] = None
        else:
            seen_at = _time(seen)
            if seen_at.tzinfo is not UTC:
                seen_at = seen_at.astimezone(UTC)
            if not TS_MIN <= seen_at < TS_MAX:
                raise _Slow
            out["last_seen_at"] = seen_at
    else:
        out["type"] = (
            "session.started" if type(event) is WireSessionStarted else "session.heartbeat"
        )
    return out


def flatten(event: Event) -> dict[str, Any]:
    """The flat dict of a validated pydantic event (the slow path's result)."""
    out: dict[str, Any] = {name: getattr(event, name) for name in _ENVELOPE}
    out["run_id"] = out["run_id"] or ""
    out["session_id"] = out["session_id"] or ""
    out["reservation_id"] = out["reservation_id"] or ""
    for name in FIELDS[event.type]:
        out[name] = getattr(event, name)
    return out


def decode(raw: bytes) -> dict[str, Any]:
    """One wire message as a flat dict; raises InvalidEvent with the contract's message."""
    try:
        return _fast(raw)
    except _Slow:
        return flatten(parse_event(raw))
