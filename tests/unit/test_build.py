"""The emitter's fast builders agree with the contract: same events accepted, same words."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from producers import build
from producers.ids import uuid7_time_ms
from producers.simulate import traffic
from schemas.events import InvalidEvent, parse_event

BUILDERS = {
    "llm_usage": build.llm_usage,
    "tool_call": build.tool_call,
    "gateway_request": build.gateway_request,
    "storage_usage": build.storage_usage,
}


def make(name: str, kw: dict) -> dict:
    if name.startswith("session_"):
        return build.session(name.replace("_", "."), **kw)
    return BUILDERS[name](**kw)


def test_every_event_a_builder_makes_is_valid_by_the_contract():
    for name, kw in itertools.islice(traffic(orgs=3, agents=2, seed=1), 2_000):
        event = make(name, kw)
        parsed = parse_event(orjson.dumps(event))
        assert parsed.type == name.replace("_", ".", 1)
        assert parsed.org_id == kw["org_id"]


def test_builders_fill_in_a_uuid7_and_the_time_now():
    before = datetime.now(UTC)
    event = build.llm_usage("acme", "a1", "gpt-4o", 10, 2)
    parsed = parse_event(orjson.dumps(event))
    assert before - timedelta(milliseconds=1) <= parsed.ts <= datetime.now(UTC)
    assert abs(uuid7_time_ms(event["event_id"]) - parsed.ts.timestamp() * 1000) < 1
    assert event["schema_version"] == 1 and event["key_mode"] == "live"


def test_a_time_may_be_given_as_rfc_3339_text():
    event = build.llm_usage("acme", "a1", "gpt-4o", 1, 1, ts="2026-11-23T12:00:00.25+02:00")
    assert event["ts"] == "2026-11-23T10:00:00.250000Z"


def test_a_given_time_is_written_in_utc():
    ts = datetime(2026, 11, 23, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = build.tool_call("acme", "a1", "github", "create_issue", True, ts=ts, event_id="e-1")
    assert event["ts"] == "2026-11-23T10:00:00Z"
    assert event["event_id"] == "e-1"


GOOD = {
    "org_id": "acme",
    "agent_id": "a1",
    "model": "gpt-4o",
    "input_tokens": 5,
    "output_tokens": 1,
}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"org_id": "acme corp"},
            "org_id: must be 1 to 128 printable ASCII characters, without spaces",
        ),
        ({"agent_id": ""}, "agent_id: must have at least 1 character"),
        ({"run_id": 7}, "run_id: must be a valid string"),
        ({"input_tokens": -3}, "input_tokens: must be greater than or equal to 0"),
        ({"output_tokens": 2.5}, "output_tokens: must be a valid integer"),
        ({"input_tokens": True}, "input_tokens: must be a valid integer"),
        (
            {"cached_input_tokens": 6},
            "cached_input_tokens: must not exceed input_tokens (it is the cached part of them)",
        ),
        ({"key_mode": "prod"}, "key_mode: must be 'live' or 'test'"),
        ({"key_mode": ["live"]}, "key_mode: must be 'live' or 'test'"),
        ({"mode": {"managed": 1}}, "mode: must be 'managed' or 'byok'"),
        ({"model": "m" * 129}, "model: must have at most 128 characters"),
        (
            {"event_id": "has space"},
            "event_id: must be 1 to 128 printable ASCII characters, without spaces",
        ),
        (
            {"ts": datetime(2026, 11, 23, 10, 0)},
            "ts: must carry a UTC offset (Z or +hh:mm), e.g. 2026-11-23T10:15:00Z",
        ),
        (
            {"ts": datetime(1999, 1, 1, tzinfo=UTC)},
            "ts: must be between 2000-01-01 and 2199-12-31 (UTC)",
        ),
        (
            {"ts": "2026-11-23T10:00:00"},
            "ts: must carry a UTC offset (Z or +hh:mm), e.g. 2026-11-23T10:15:00Z",
        ),
        ({"ts": 1795420500}, "ts: must be an RFC 3339 string such as 2026-11-23T10:15:00Z"),
    ],
)
def test_a_bad_argument_is_refused_with_the_contracts_message(overrides, message):
    with pytest.raises(InvalidEvent) as info:
        build.llm_usage(**{**GOOD, **overrides})
    assert info.value.reason == message


def test_the_other_kinds_refuse_their_own_bad_fields():
    with pytest.raises(InvalidEvent, match="^success: must be a valid boolean$"):
        build.tool_call("acme", "a1", "github", "x", "yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="^cache_hit: must be a valid boolean$"):
        build.gateway_request("acme", "a1", "gpt-4o", cache_hit=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="^session_id: must be a valid string$"):
        build.session("session.started", "acme", "a1", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="^kind: must be 'knowledge_base' or 'traces'$"):
        build.storage_usage("acme", "a1", "disk", 10)
    with pytest.raises(InvalidEvent, match="^byte_seconds: must be less than or equal to"):
        build.storage_usage("acme", "a1", "traces", 10**18 + 1)


def test_a_valid_name_is_not_taken_for_a_valid_id():
    build.llm_usage("acme", "a1", "my model", 1, 1)  # a name may hold a space
    with pytest.raises(InvalidEvent, match="^org_id: must be 1 to 128 printable ASCII"):
        build.llm_usage("my model", "a1", "gpt-4o", 1, 1)


def test_a_reservation_id_is_carried_when_given_and_checked_like_an_id():
    event = build.llm_usage("acme", "a1", "gpt-4o", 10, 2, reservation_id="rsv_1")
    assert parse_event(orjson.dumps(event)).reservation_id == "rsv_1"
    assert "reservation_id" not in build.llm_usage("acme", "a1", "gpt-4o", 10, 2)
    start = build.session("session.started", "acme", "a1", "s1", reservation_id="rsv_2")
    assert parse_event(orjson.dumps(start)).reservation_id == "rsv_2"
    with pytest.raises(InvalidEvent, match="reservation_id"):
        build.tool_call("acme", "a1", "github", "x", True, reservation_id="has space")
