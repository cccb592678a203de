"""The fast decoder accepts exactly what the contract accepts, and says what pydantic says."""

import gc
import random
from datetime import datetime

import orjson
import pytest

from schemas.events import RFC3339, InvalidEvent, parse_event
from streams.decode import _fast, _Slow, _time, decode, flatten, wire
from tests.factories import DEFAULTS, make_event

# Admission requests (one per strict check, written by the API) take the contract's path.
KINDS = [k for k in DEFAULTS if k != "admission.requested"]
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
    ("provider", "openai"),
    ("provider", "gcp.vertex_ai"),
    ("provider", ""),
    ("provider", "p" * 129),
    ("provider", 5),
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


def test_decoding_a_fetch_does_not_set_off_the_garbage_collector():
    # A fetch decodes thousands of events at once. Each allocation the collector tracks
    # counts towards its next collection, even one untracked at once; the wire structs
    # hold only strings, numbers and booleans (no cycle), so they are allocated untracked.
    raws = [orjson.dumps(make_event(kind)) for kind in KINDS]
    gc.disable()
    try:
        before = gc.get_count()[0]
        events = [wire(raw) for _ in range(500) for raw in raws]
        allocated = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert len(events) == 500 * len(KINDS)
    assert allocated < 10


def test_not_json_and_not_objects_are_refused_with_a_reason():
    for raw in (b"", b"{", b"[1, 2]", b"null"):
        with pytest.raises(InvalidEvent):
            decode(raw)


def _raw(kind: str, tail: bytes) -> bytes:
    """A valid event of `kind` with `tail` spliced in as its last members."""
    return orjson.dumps(make_event(kind))[:-1] + tail


# What JSON can say that a dict cannot: repeated members, escapes, bytes that are not UTF-8,
# numbers written as floats or beyond 64 bits, text around the object, and times and
# lengths at the contract's edges.
RAW_EDGES = [
    _raw("tool.call", b',"success":"yes"}'),
    _raw("tool.call", b',"org_id":"other"}'),
    _raw("tool.call", b',"type":"llm.usage"}'),
    _raw("llm.usage", b',"model":"\\ud800"}'),
    _raw("llm.usage", b',"model":"\\ud83d\\ude00"}'),
    _raw("llm.usage", b',"model":"a\\u0000b"}'),
    _raw("llm.usage", b',"model":"\xed\xa0\x80"}'),
    _raw("llm.usage", b',"model":"\xff"}'),
    _raw("llm.usage", b',"model":"' + "é".encode() * 128 + b'"}'),
    _raw("llm.usage", b',"model":"' + "é".encode() * 129 + b'"}'),
    _raw("llm.usage", b',"model":"' + "😀".encode() * 129 + b'"}'),
    _raw("llm.usage", b',"input_tokens":1e2}'),
    _raw("llm.usage", b',"input_tokens":100.0}'),
    _raw("llm.usage", b',"input_tokens":-0}'),
    _raw("llm.usage", b',"input_tokens":1000000000000}'),
    _raw("llm.usage", b',"input_tokens":1000000000001}'),
    _raw("llm.usage", b',"input_tokens":100000000000000000000000000000}'),
    _raw("llm.usage", b',"ts":"2026-11-23t10:00:00z"}'),
    _raw("llm.usage", b',"ts":"2026-11-23 10:00:00Z"}'),
    _raw("llm.usage", b',"ts":"2026-11-23T10:00:00.123456789Z"}'),
    _raw("llm.usage", b',"ts":"2026-11-23T10:00:00.1234567891Z"}'),
    _raw("llm.usage", b',"ts":"2026-11-23T10:00:60Z"}'),
    _raw("llm.usage", b',"ts":"2026-02-30T10:00:00Z"}'),
    _raw("llm.usage", b',"ts":"2000-01-01T01:00:00+02:00"}'),
    _raw("llm.usage", b',"ts":"2199-12-31T23:59:59-01:00"}'),
    _raw("llm.usage", b',"schema_version":true}'),
    _raw("llm.usage", b',"schema_version":0}'),
    _raw("llm.usage", b',"org_id":"caf\\u00e9"}'),
    _raw("llm.usage", b',"org_id":"a\\tb"}'),
    _raw("llm.usage", b',"org_id":"\\u0041"}'),
    _raw("llm.usage", b',"key_mode":"LIVE"}'),
    _raw("llm.usage", b',"mode":null}'),
    _raw("llm.usage", b',"run_id":""}'),
    _raw("llm.usage", b',"x":NaN}'),
    _raw("llm.usage", b',"x":[[[[[[[[1]]]]]]]]}'),
    _raw("llm.usage", b"} x"),
    b"  " + _raw("llm.usage", b"}  "),
    _raw("session.started", b',"session_id":null}'),
    _raw("storage.usage", b',"byte_seconds":1000000000000000000}'),
    _raw("storage.usage", b',"byte_seconds":1000000000000000001}'),
]


@pytest.mark.parametrize("raw", RAW_EDGES)
def test_raw_json_edges_agree_with_the_contract(raw):
    expected = outcome(raw)
    try:
        fast = _fast(raw)
    except _Slow:
        fast = None
    if fast is not None:
        assert expected == ("ok", fast)
    try:
        assert ("ok", decode(raw)) == expected
    except InvalidEvent as exc:
        assert ("invalid", exc.reason) == expected


def _contract_time(ts: str):
    """What the contract makes of `ts`: its RFC 3339 expression, then fromisoformat."""
    if not RFC3339.match(ts):
        return None
    try:
        return datetime.fromisoformat(ts)
    except ValueError:
        return None


TIMES = [
    "2026-11-23T18:13:31.199733+00:00",
    "2026-11-23T10:00:00Z",
    "2026-11-23 10:00:00.5-05:30",
    "2026-11-23T10:00:00.123456789Z",
]


@pytest.mark.parametrize("seed", range(8))
def test_the_fast_time_check_accepts_only_what_the_contract_accepts(seed):
    """Strings one to three edits away from valid times, including digits outside ASCII
    (which the contract's expression matches and the fast check leaves to it)."""
    rng = random.Random(seed)
    alphabet = "0123456789-:Tt zZ+.,W\u00b2\u0663"
    accepted = 0
    for _ in range(20_000):
        chars = list(rng.choice(TIMES))
        for _ in range(rng.randrange(0, 4)):
            i = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, rng.choice(alphabet))
            else:
                chars[i] = rng.choice(alphabet)
        ts = "".join(chars)
        try:
            fast = _time(ts)
        except _Slow:
            continue
        accepted += 1
        assert fast == _contract_time(ts), ts
    assert accepted > 2_000  # the common shapes do take the fast path
