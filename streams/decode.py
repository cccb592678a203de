"""Fast decoding of wire events for the worker's hot path.

`decode()` parses with orjson and checks the common, valid shape by hand, which costs a few
microseconds instead of a full pydantic validation. It accepts only what the pydantic
models in `schemas.events` accept (a strict subset: anything unusual falls through), and
everything it does not accept goes through `parse_event()`, so that a refused message gets
exactly the contract's error message. Both paths return the same flat dict.
"""

from __future__ import annotations

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

_COUNTS = {
    "llm.usage": ("input_tokens", "output_tokens", "cached_input_tokens"),
}
_NAMES = {
    "llm.usage": ("model",),
    "tool.call": ("connector", "tool"),
    "gateway.request": ("model",),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "llm.usage": {"cached_input_tokens": 0, "mode": "managed"},
    "tool.call": {},
    "gateway.request": {"cache_hit": False, "mode": "managed"},
    "session.started": {},
    "session.ended": {},
    "storage.usage": {},
}
FIELDS = {
    "llm.usage": ("model", "input_tokens", "output_tokens", "cached_input_tokens", "mode"),
    "tool.call": ("connector", "tool", "success"),
    "gateway.request": ("model", "cache_hit", "mode"),
    "session.started": (),
    "session.ended": (),
    "storage.usage": ("kind", "byte_seconds"),
}
_ENVELOPE = ("event_id", "org_id", "agent_id", "run_id", "session_id", "key_mode", "ts", "type")


class _Slow(Exception):
    """Not the common shape: let pydantic decide and explain."""


def _id(value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= 128 or not value.isascii():
        raise _Slow
    if not value.isprintable() or " " in value:
        raise _Slow
    return value


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


def _fast(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Slow from None
    if type(data) is not dict:
        raise _Slow
    kind = data.get("type")
    defaults = DEFAULTS.get(kind)  # type: ignore[arg-type]
    if defaults is None or data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise _Slow
    ts = data.get("ts")
    if type(ts) is not str or not RFC3339.match(ts):
        raise _Slow
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        raise _Slow from None
    if not TS_MIN <= when < TS_MAX or data.get("key_mode") not in ("live", "test"):
        raise _Slow
    out = {
        "event_id": _id(data.get("event_id")),
        "org_id": _id(data.get("org_id")),
        "agent_id": _id(data.get("agent_id")),
        "run_id": _id(data["run_id"]) if data.get("run_id") is not None else "",
        "session_id": _id(data["session_id"]) if data.get("session_id") is not None else "",
        "key_mode": data["key_mode"],
        "ts": when.astimezone(UTC),
        "type": kind,
    }
    for name in _NAMES.get(kind, ()):  # type: ignore[arg-type]
        out[name] = _name(data.get(name))
    for name in _COUNTS.get(kind, ()):  # type: ignore[arg-type]
        out[name] = _count(data.get(name, defaults.get(name)))
    if kind == "llm.usage":
        if out["cached_input_tokens"] > out["input_tokens"]:
            raise _Slow
        out["mode"] = _mode(data.get("mode", "managed"))
    elif kind == "tool.call":
        out["success"] = _flag(data.get("success"))
    elif kind == "gateway.request":
        out["cache_hit"] = _flag(data.get("cache_hit", False))
        out["mode"] = _mode(data.get("mode", "managed"))
    elif kind == "storage.usage":
        if data.get("kind") not in ("knowledge_base", "traces"):
            raise _Slow
        out["kind"] = data["kind"]
        out["byte_seconds"] = _count(data.get("byte_seconds"), MAX_BYTE_SECONDS)
    elif not out["session_id"]:
        raise _Slow
    return out


def _mode(value: Any) -> str:
    if value not in ("managed", "byok"):
        raise _Slow
    return str(value)


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
