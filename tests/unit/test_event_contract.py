"""The event contract: every rule, checked by the message a runtime author would read."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from commands.cli import cli
from schemas.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    InvalidEvent,
    LlmUsage,
    event_json_schema,
    parse_event,
    validate_event,
)
from tests.factories import make_event

ID_RULE = "must be 1 to 128 printable ASCII characters, without spaces"


def refusal(event: dict | bytes) -> str:
    raw = event if isinstance(event, bytes) else orjson.dumps(event)
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    return info.value.reason


@pytest.mark.parametrize(
    ("type_", "overrides", "message"),
    [
        # envelope: identifiers
        ("llm.usage", {"org_id": ...}, "org_id: is required"),
        ("llm.usage", {"event_id": ...}, "event_id: is required"),
        ("llm.usage", {"agent_id": ...}, "agent_id: is required"),
        ("llm.usage", {"org_id": "acme corp"}, f"org_id: {ID_RULE}"),
        ("llm.usage", {"org_id": ""}, "org_id: must have at least 1 character"),
        ("llm.usage", {"agent_id": "a" * 129}, "agent_id: must have at most 128 characters"),
        ("llm.usage", {"run_id": "r\n1"}, f"run_id: {ID_RULE}"),
        ("llm.usage", {"session_id": "séance"}, f"session_id: {ID_RULE}"),
        ("llm.usage", {"org_id": 42}, "org_id: must be a valid string"),
        # envelope: key mode, time, version
        ("llm.usage", {"key_mode": ...}, "key_mode: is required"),
        ("llm.usage", {"key_mode": "prod"}, "key_mode: must be 'live' or 'test'"),
        ("llm.usage", {"ts": ...}, "ts: is required"),
        (
            "llm.usage",
            {"ts": "2026-11-23T10:15:00"},
            "ts: must carry a UTC offset (Z or +hh:mm), e.g. 2026-11-23T10:15:00Z",
        ),
        (
            "llm.usage",
            {"ts": 1795420500},
            "ts: must be an RFC 3339 string such as 2026-11-23T10:15:00Z",
        ),
        (
            "llm.usage",
            {"ts": "23/11/2026 10:15"},
            "ts: must be an RFC 3339 timestamp such as 2026-11-23T10:15:00Z",
        ),
        (
            "llm.usage",
            {"ts": "1999-12-31T23:59:59Z"},
            "ts: must be between 2000-01-01 and 2199-12-31 (UTC)",
        ),
        (
            "llm.usage",
            {"ts": "2026-02-30T00:00:00Z"},
            "ts: must be a valid datetime or date, day value is outside expected range",
        ),
        (
            "llm.usage",
            {"schema_version": SCHEMA_VERSION + 1},
            f"schema_version: {SCHEMA_VERSION + 1} is newer than this Tally understands "
            f"({SCHEMA_VERSION}); upgrade Tally before sending it, or send schema_version "
            f"{SCHEMA_VERSION}",
        ),
        ("llm.usage", {"schema_version": "1"}, "schema_version: must be a valid integer"),
        ("llm.usage", {"schema_version": 0}, "schema_version: must be greater than or equal to 1"),
        # type
        ("llm.usage", {"type": "llm.usage.v2"}, f"type: must be one of {', '.join(EVENT_TYPES)}"),
        ("llm.usage", {"type": ...}, f"type: must be one of {', '.join(EVENT_TYPES)}"),
        # llm.usage
        ("llm.usage", {"model": ...}, "model: is required"),
        ("llm.usage", {"model": ""}, "model: must have at least 1 character"),
        ("llm.usage", {"model": "m" * 129}, "model: must have at most 128 characters"),
        ("llm.usage", {"input_tokens": -1}, "input_tokens: must be greater than or equal to 0"),
        (
            "llm.usage",
            {"output_tokens": 10**12 + 1},
            "output_tokens: must be less than or equal to 1000000000000",
        ),
        ("llm.usage", {"input_tokens": "100"}, "input_tokens: must be a valid integer"),
        ("llm.usage", {"input_tokens": 100.0}, "input_tokens: must be a valid integer"),
        ("llm.usage", {"output_tokens": True}, "output_tokens: must be a valid integer"),
        (
            "llm.usage",
            {"input_tokens": 10, "cached_input_tokens": 11},
            "cached_input_tokens: must not exceed input_tokens (it is the cached part of them)",
        ),
        ("llm.usage", {"mode": "free"}, "mode: must be 'managed' or 'byok'"),
        # tool.call
        ("tool.call", {"success": ...}, "success: is required"),
        ("tool.call", {"success": "yes"}, "success: must be a valid boolean"),
        ("tool.call", {"success": 1}, "success: must be a valid boolean"),
        ("tool.call", {"connector": ""}, "connector: must have at least 1 character"),
        ("tool.call", {"tool": "t" * 129}, "tool: must have at most 128 characters"),
        # gateway.request
        ("gateway.request", {"cache_hit": "false"}, "cache_hit: must be a valid boolean"),
        ("gateway.request", {"model": ...}, "model: is required"),
        # sessions
        ("session.started", {"session_id": ...}, "session_id: is required"),
        ("session.ended", {"session_id": None}, "session_id: must be a valid string"),
        # storage.usage
        ("storage.usage", {"kind": "cache"}, "kind: must be 'knowledge_base' or 'traces'"),
        ("storage.usage", {"byte_seconds": -5}, "byte_seconds: must be greater than or equal to 0"),
        (
            "storage.usage",
            {"byte_seconds": 10**18 + 1},
            "byte_seconds: must be less than or equal to 1000000000000000000",
        ),
    ],
)
def test_each_rule_names_the_field_and_the_rule(type_, overrides, message):
    event = make_event(type_, **{k: v for k, v in overrides.items() if k != "type"})
    if "type" in overrides:
        event = {k: v for k, v in {**event, "type": overrides["type"]}.items() if v is not ...}
    assert refusal(event) == message


def test_several_problems_are_all_reported():
    reason = refusal(make_event(input_tokens=-1, output_tokens="x", key_mode="qa"))
    assert reason == (
        "key_mode: must be 'live' or 'test'; input_tokens: must be greater than or equal to 0; "
        "output_tokens: must be a valid integer"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "event: is not valid JSON (expected ident at line 1 column 2)"),
        (b"[1, 2]", "event: must be a JSON object"),
        (b'"llm.usage"', "event: must be a JSON object"),
        (b"{}", f"type: must be one of {', '.join(EVENT_TYPES)}"),
    ],
)
def test_malformed_messages_are_refused_clearly(raw, message):
    assert refusal(raw) == message


def test_unknown_fields_are_ignored():
    event = parse_event(orjson.dumps(make_event(region="eu-west", cost_hint=3)))
    assert isinstance(event, LlmUsage)
    assert not hasattr(event, "region")


def test_an_older_or_missing_schema_version_is_read_as_the_current_one():
    assert parse_event(orjson.dumps(make_event(schema_version=...))).schema_version == 1
    assert parse_event(orjson.dumps(make_event(schema_version=1))).schema_version == 1


def test_times_with_an_offset_are_stored_as_utc():
    event = parse_event(orjson.dumps(make_event(ts="2026-11-23T12:15:00.5+02:00")))
    assert event.ts == datetime(2026, 11, 23, 10, 15, 0, 500_000, tzinfo=UTC)
    assert parse_event(orjson.dumps(make_event(ts="2026-11-23 10:15:00z"))).ts.hour == 10


def test_every_kind_of_the_docs_parses():
    for type_ in EVENT_TYPES:
        assert validate_event(make_event(type_)).type == type_


def test_json_schema_describes_every_kind():
    schema = event_json_schema()
    assert schema["title"] == "Tally usage event"
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    llm = schema["$defs"]["LlmUsage"]
    assert llm["properties"]["input_tokens"]["minimum"] == 0
    assert llm["properties"]["key_mode"]["enum"] == ["live", "test"]


def test_tally_schema_events_prints_the_json_schema():
    result = CliRunner().invoke(cli, ["schema", "events"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == event_json_schema()


def test_the_examples_in_docs_events_md_are_valid_events():
    text = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    examples = re.findall(r"```json\n(.*?)```", text, re.S)
    types = [parse_event(example.encode()).type for example in examples]
    assert sorted(types) == sorted(EVENT_TYPES)


def test_the_worker_fast_path_refuses_the_times_the_contract_refuses():
    from streams.decode import decode

    for ts in (
        "2026-11-23T10:15Z",
        "2026-11-23T10:15:00+0200",
        "20261123T101500Z",
        "1990-01-01T00:00:00Z",
        "2250-01-01T00:00:00Z",
    ):
        raw = orjson.dumps(make_event(ts=ts))
        with pytest.raises(InvalidEvent) as contract:
            parse_event(raw)
        with pytest.raises(InvalidEvent) as worker:
            decode(raw)
        assert worker.value.reason == contract.value.reason
