"""Fast decoding of wire events for the worker's hot path.

`decode()` parses with orjson and checks the common, valid shape by hand, which costs a few
microseconds instead of a full pydantic validation. It accepts only what the pydantic
models in `schemas.events` accept (a strict subset: anything unusual falls through), and
everything it does not accept goes through `parse_event()`, so that a refused message gets
exactly the contract's error message. Both paths return the same flat dict.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.events import (
    MAX_BYTE_SECONDS,
    MAX_TOKENS,
    RFC3339,
    SCHEMA_VERSION,
    TS_MAX,
    TS_MIN,
    Event,
    parse_event,
)

FIELDS = {
    "llm.usage": ("model", "input_tokens", "output_tokens", "cached_input_tokens", "mode"),
    "tool.call": ("connector", "tool", "success"),
    "gateway.request": ("model", "cache_hit", "mode"),
    "session.started": (),
    "session.ended": (),
    "storage.usage": ("kind", "byte_seconds"),
}
_loads = orjson.loads
_fromisoformat = datetime.fromisoformat
_RFC3339 = RFC3339.match
_ENVELOPE = ("event_id", "org_id", "agent_id", "run_id", "session_id", "key_mode", "ts", "type")


class _Slow(Exception):
    """Not the common shape: let pydantic decide and explain."""


# The contract's Id: 1 to 128 printable ASCII characters, no space.
_ID = re.compile(r"[!-~]{1,128}").fullmatch
# Ids that repeat from event to event (orgs, agents, runs, sessions), already checked.
_known: set[str] = set()
_KNOWN_MAX = 1 << 16


def _id(value: Any) -> str:
    if value in _known:  # an unhashable value raises TypeError: the slow path's to judge
        return value  # type: ignore[no-any-return]
    if type(value) is not str or not _ID(value):
        raise _Slow
    if len(_known) >= _KNOWN_MAX:
        _known.clear()
    _known.add(value)
    return value


def _optional_id(value: Any) -> str:
    return "" if value is None else _id(value)


def _name(value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= 128:
        raise _Slow
    return value


def _count(value: Any, limit: int = MAX_TOKENS) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise _Slow
    return value


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise _Slow
    return value


def _mode(value: Any) -> str:
    if value != "managed" and value != "byok":
        raise _Slow
    return value  # type: ignore[no-any-return]


def _fast(raw: bytes) -> dict[str, Any]:
    try:
        data = _loads(raw)
    except orjson.JSONDecodeError:
        raise _Slow from None
    if type(data) is not dict:
        raise _Slow
    try:
        return _event(data)
    except TypeError:  # e.g. an object where an id belongs
        raise _Slow from None


def _event(data: dict[str, Any]) -> dict[str, Any]:
    get = data.get
    kind = get("type")
    version = get("schema_version", SCHEMA_VERSION)
    if kind not in FIELDS or version != SCHEMA_VERSION or type(version) is not int:
        raise _Slow
    ts = get("ts")
    if type(ts) is not str or not _RFC3339(ts):
        raise _Slow
    try:
        when = _fromisoformat(ts)
    except ValueError:
        raise _Slow from None
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC)
    key_mode = get("key_mode")
    if not TS_MIN <= when < TS_MAX or (key_mode != "live" and key_mode != "test"):
        raise _Slow
    event_id = get("event_id")
    if type(event_id) is not str or not _ID(event_id):
        raise _Slow
    out = {
        "event_id": event_id,
        "org_id": _id(get("org_id")),
        "agent_id": _id(get("agent_id")),
        "run_id": _optional_id(get("run_id")),
        "session_id": _optional_id(get("session_id")),
        "key_mode": key_mode,
        "ts": when,
        "type": kind,
    }
    if kind == "llm.usage":
        out["model"] = _name(get("model"))
        inp = out["input_tokens"] = _count(get("input_tokens"))
        out["output_tokens"] = _count(get("output_tokens"))
        if _count(get("cached_input_tokens", 0)) > inp:
            raise _Slow
        out["cached_input_tokens"] = get("cached_input_tokens", 0)
        out["mode"] = _mode(get("mode", "managed"))
    elif kind == "tool.call":
        out["connector"] = _name(get("connector"))
        out["tool"] = _name(get("tool"))
        out["success"] = _flag(get("success"))
    elif kind == "gateway.request":
        out["model"] = _name(get("model"))
        out["cache_hit"] = _flag(get("cache_hit", False))
        out["mode"] = _mode(get("mode", "managed"))
    elif kind == "storage.usage":
        storage_kind = get("kind")
        if storage_kind != "knowledge_base" and storage_kind != "traces":
            raise _Slow
        out["kind"] = storage_kind
        out["byte_seconds"] = _count(get("byte_seconds"), MAX_BYTE_SECONDS)
    elif not out["session_id"]:
        raise _Slow
    return out


def flatten(event: Event) -> dict[str, Any]:
    """The flat dict of a validated pydantic event (the slow path's result)."""
    out: dict[str, Any] = {name: getattr(event, name) for name in _ENVELOPE}
    out["run_id"] = out["run_id"] or ""
    out["session_id"] = out["session_id"] or ""
    for name in FIELDS[event.type]:
        out[name] = getattr(event, name)
    return out


def decode(raw: bytes) -> dict[str, Any]:
    """One wire message as a flat dict; raises InvalidEvent with the contract's message."""
    try:
        return _fast(raw)
    except _Slow:
        return flatten(parse_event(raw))
