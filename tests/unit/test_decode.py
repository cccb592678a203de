"""The fast decoder accepts exactly what the contract accepts, and says what pydantic says."""

import random

import orjson
import pytest

from schemas.events import InvalidEvent, parse_event
from streams.decode import _fast, _Slow, decode, flatten
from tests.factories import DEFAULTS, make_event

KINDS = list(DEFAULTS)
MUTATIONS = [
    ("input_tokens", -1),
    ("input_tokens", 1.5),
    ("input_tokens", "10"),
    ("input_tokens", True),
    ("output_tokens", 10**13),
    ("cached_input_tokens", 10**9),
    ("ts", "2026-11-23T10:00:00"),
    ("ts", "yesterday"),
    ("ts", 1700000000),
    ("ts", "2026-11-23T10:00:00+05:30"),
    ("key_mode", "prod"),
    ("org_id", ""),
    ("org_id", "a b"),
    ("org_id", "x" * 129),
    ("org_id", "é"),
    ("event_id", None),
    ("run_id", None),
    ("session_id", None),
    ("success", "yes"),
    ("success", 1),
    ("cache_hit", None),
    ("mode", "free"),
    ("model", ""),
    ("model", "m" * 129),
    ("kind", "disk"),
    ("byte_seconds", -5),
    ("schema_version", 2),
    ("schema_version", 1),
    ("schema_version", "1"),
    ("schema_version", True),
    ("schema_version", 1.0),
    ("org_id", ["a"]),
    ("agent_id", {"a": 1}),
    ("event_id", "x" * 129),
    ("run_id", "r\n"),
    ("type", "llm"),
    ("extra_field", {"a": 1}),
    ("agent_id", 7),
]


def outcome(raw: bytes):
    try:
        return "ok", flatten(parse_event(raw))
    except InvalidEvent as exc:
        return "invalid", exc.reason


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_agrees_with_the_contract(seed):
    rng = random.Random(seed)
    for _ in range(60):
        event = make_event(rng.choice(KINDS))
        for field, value in rng.sample(MUTATIONS, rng.randrange(0, 3)):
            if value is None:
                event.pop(field, None)
            else:
                event[field] = value
        raw = orjson.dumps(event)
        expected = outcome(raw)
        try:
            fast = _fast(raw)
        except _Slow:
            fast = None
        if fast is not None:  # the fast path may only accept what the contract accepts
            assert expected == ("ok", fast), event
        try:
            assert ("ok", decode(raw)) == expected
        except InvalidEvent as exc:
            assert ("invalid", exc.reason) == expected


def test_the_common_shape_takes_the_fast_path():
    for kind in KINDS:
        assert _fast(orjson.dumps(make_event(kind)))["type"] == kind


def test_not_json_and_not_objects_are_refused_with_a_reason():
    for raw in (b"", b"{", b"[1, 2]", b"null"):
        with pytest.raises(InvalidEvent):
            decode(raw)
