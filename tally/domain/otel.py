"""OpenTelemetry GenAI spans as usage events: the mapping, with no I/O.

The rules follow the GenAI semantic conventions (`SEMCONV`, see docs/otel.md for the table):
model calls (`chat`, `text_completion`, `generate_content`, `embeddings`) become `llm.usage`,
`execute_tool` becomes `tool.call` (a span with status ERROR is a failed call), and
`invoke_agent` spans name the agent of the spans below them. Attributes are read by their
convention names, never from a span's display name. Every other span, and a model call that
reports no tokens, carries no usage: it is ignored (and counted), never an error.

`event_id` is derived from the trace and span ids, so a span exported twice is one event;
`ts` is the span's end time; the run is the trace (or `tally.run.id`); the session is
`gen_ai.conversation.id`; the provider is `gen_ai.provider.name`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

SEMCONV = "1.41.0"  # the last release of open-telemetry/semantic-conventions that holds gen-ai

AttrValue = str | bool | int | float | None
Attributes = Mapping[str, AttrValue]

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
TOOL_OPERATION = "execute_tool"
AGENT_OPERATION = "invoke_agent"

OPERATION = "gen_ai.operation.name"
AGENT_ID = "gen_ai.agent.id"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
PROVIDER = "gen_ai.provider.name"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHED_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
# Names older instrumentations still send (deprecated by the conventions), read as fallbacks.
OLD_INPUT_TOKENS = "gen_ai.usage.prompt_tokens"
OLD_OUTPUT_TOKENS = "gen_ai.usage.completion_tokens"
OLD_PROVIDER = "gen_ai.system"
TOOL_NAME = "gen_ai.tool.name"
SERVICE_NAME = "service.name"
# Tally's own attributes, on the span or on the resource.
RUN_ATTR = "tally.run.id"
CONNECTOR_ATTR = "tally.connector"

EVENT_ID_PREFIX = "otel-"
MAX_ID = 128
MAX_TOKENS = 10**12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Span:
    """What the mapping reads of one span: plain values, decoded by the adapter."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    end_ns: int
    error: bool  # the span's status code is ERROR
    attributes: Attributes
    resource: Attributes = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One span's fate: an event (wire-format dict), a refusal with its reason, or nothing
    (a span without usage)."""

    kind: Literal["event", "rejected", "ignored"]
    event: dict[str, object] | None = None
    reason: str | None = None


class _Refused(ValueError):
    pass


def map_spans(spans: Iterable[Span], org_id: str, key_mode: str) -> list[Outcome]:
    """The outcome of each span of one export, in order. Spans of the same export are read
    together: a span's agent and session may come from an `invoke_agent` ancestor."""
    spans = list(spans)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    out = []
    for span in spans:
        try:
            out.append(_map(span, by_id, org_id, key_mode))
        except _Refused as exc:
            ref = event_id(span.trace_id, span.span_id)
            out.append(Outcome("rejected", reason=f"span {ref}: {exc}"))
    return out


def event_id(trace_id: bytes, span_id: bytes) -> str:
    """The event id of a span: the same span exported again is the same event."""
    return f"{EVENT_ID_PREFIX}{trace_id.hex()}-{span_id.hex()}"


def end_time(end_ns: int) -> datetime:
    """A span's end (nanoseconds since the Unix epoch) as a UTC time, to the microsecond."""
    return _EPOCH + timedelta(microseconds=end_ns // 1000)


def _map(
    span: Span, by_id: Mapping[tuple[bytes, bytes], Span], org_id: str, key_mode: str
) -> Outcome:
    operation = span.attributes.get(OPERATION)
    if operation in LLM_OPERATIONS:
        tokens = _tokens(span)
        if tokens is None:
            return Outcome("ignored")
        kind = "llm.usage"
    elif operation == TOOL_OPERATION:
        kind = "tool.call"
    else:
        return Outcome("ignored")
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise _Refused("trace_id must be 16 bytes and span_id 8 bytes")
    if span.end_ns <= 0:
        raise _Refused("end_time_unix_nano is missing: a span is counted at its end")
    ancestors = list(_ancestors(span, by_id))
    event: dict[str, object] = {
        "event_id": event_id(span.trace_id, span.span_id),
        "org_id": org_id,
        "key_mode": key_mode,
        "agent_id": _agent(span, ancestors),
        "run_id": _run(span),
        "ts": end_time(span.end_ns),
        "type": kind,
    }
    session = _first_str(CONVERSATION, span, *ancestors)
    if session is not None:
        event["session_id"] = _id(session, CONVERSATION)
    if kind == "tool.call":
        tool = _str(span.attributes, TOOL_NAME)
        if tool is None:
            raise _Refused(f"{TOOL_NAME} is missing: an execute_tool span names its tool")
        connector = (
            _str(span.attributes, CONNECTOR_ATTR) or _str(span.resource, CONNECTOR_ATTR) or tool
        )
        if max(len(tool), len(connector)) > MAX_ID:
            raise _Refused(f"the tool or connector name is over {MAX_ID} characters")
        event.update(tool=tool, connector=connector, success=not span.error)
        return Outcome("event", event=event)
    assert tokens is not None
    model = _str(span.attributes, RESPONSE_MODEL) or _str(span.attributes, REQUEST_MODEL)
    if model is None:
        raise _Refused(f"{RESPONSE_MODEL} and {REQUEST_MODEL} are both missing")
    if len(model) > MAX_ID:
        raise _Refused(f"the model name is over {MAX_ID} characters")
    event.update(model=model, **tokens)
    provider = _str(span.attributes, PROVIDER) or _str(span.attributes, OLD_PROVIDER)
    if provider is not None:
        if len(provider) > MAX_ID:
            raise _Refused(f"{PROVIDER} is over {MAX_ID} characters")
        event["provider"] = provider
    return Outcome("event", event=event)


def _tokens(span: Span) -> dict[str, int] | None:
    """The token counts of a model call; None when it reports none."""
    attrs = span.attributes
    inp = _count(attrs, INPUT_TOKENS, OLD_INPUT_TOKENS)
    out = _count(attrs, OUTPUT_TOKENS, OLD_OUTPUT_TOKENS)
    if inp is None and out is None:
        return None
    cached = _count(attrs, CACHED_INPUT_TOKENS) or 0
    if cached > (inp or 0):
        # The conventions count cached tokens within input_tokens; a span that does not is
        # refused rather than billed at a guess.
        raise _Refused(f"{CACHED_INPUT_TOKENS} ({cached}) exceeds {INPUT_TOKENS} ({inp or 0})")
    return {"input_tokens": inp or 0, "output_tokens": out or 0, "cached_input_tokens": cached}


def _count(attrs: Attributes, *names: str) -> int | None:
    for name in names:
        if name not in attrs:
            continue
        value = attrs[name]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Refused(f"{name} must be an integer, not {value!r}")
        if not 0 <= value <= MAX_TOKENS:
            raise _Refused(f"{name} must be between 0 and {MAX_TOKENS}, not {value}")
        return value
    return None


def _ancestors(span: Span, by_id: Mapping[tuple[bytes, bytes], Span]) -> Iterable[Span]:
    seen = {span.span_id}
    parent = by_id.get((span.trace_id, span.parent_span_id))
    while parent is not None and parent.span_id not in seen:
        seen.add(parent.span_id)
        yield parent
        parent = by_id.get((parent.trace_id, parent.parent_span_id))


def _agent(span: Span, ancestors: list[Span]) -> str:
    """The span's own agent attributes; else those of its nearest `invoke_agent` ancestor
    in the export; else the resource's; else the resource's `service.name`."""
    agents = [a for a in ancestors if a.attributes.get(OPERATION) == AGENT_OPERATION]
    for attrs in [span.attributes, *(a.attributes for a in agents[:1]), span.resource]:
        name = _str(attrs, AGENT_ID) or _str(attrs, AGENT_NAME)
        if name is not None:
            return _id(name, AGENT_ID)
    return _id(_str(span.resource, SERVICE_NAME) or "unknown_service", SERVICE_NAME)


def _run(span: Span) -> str:
    run = _str(span.attributes, RUN_ATTR) or _str(span.resource, RUN_ATTR)
    return _id(run, RUN_ATTR) if run is not None else span.trace_id.hex()


def _first_str(name: str, *spans: Span) -> str | None:
    for s in spans:
        value = _str(s.attributes, name)
        if value is not None:
            return value
    return None


def _str(attrs: Attributes, name: str) -> str | None:
    value = attrs.get(name)
    return value if isinstance(value, str) and value else None


def _id(value: str, attribute: str) -> str:
    """An id of the event contract (1 to 128 printable ASCII characters, no spaces): any
    other character becomes `_` ("Math Tutor" is `Math_Tutor`)."""
    if len(value) > MAX_ID:
        raise _Refused(f"{attribute} is over {MAX_ID} characters")
    return "".join(c if "\x21" <= c <= "\x7e" else "_" for c in value)
