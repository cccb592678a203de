"""The usage-event wire contract: an envelope and one model per `type`.

Wire format: one JSON object per Kafka message on `usage.events`, keyed by `org_id`
(docs/events.md has an example of each kind). Validation is strict: integers are JSON
integers (never strings, floats or booleans), booleans are JSON booleans, `ts` is an RFC 3339
string with an explicit offset (stored as UTC), strings are bounded. Unknown fields are
ignored (producers may add fields before consumers know them); an event whose
`schema_version` is newer than `SCHEMA_VERSION` is refused, never half-understood.
Every refusal names the field and the rule (`describe()`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_TOKENS = 10**12
MAX_BYTE_SECONDS = 10**18
MAX_ID_LENGTH = 128
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2200, 1, 1, tzinfo=UTC)  # ClickHouse DateTime64 ends in 2299

ID_PATTERN = r"^[\x21-\x7e]+$"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    """Only strings in RFC 3339 form (or aware datetimes, from Python callers) are times."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string such as 2026-11-23T10:15:00Z")
    if not RFC3339.match(value):
        if RFC3339.match(value + "Z"):
            raise ValueError("must carry a UTC offset (Z or +hh:mm), e.g. 2026-11-23T10:15:00Z")
        raise ValueError("must be an RFC 3339 timestamp such as 2026-11-23T10:15:00Z")
    return value


Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, strict=True),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strict=True)]
Count = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
Flag = Annotated[bool, Field(strict=True)]
ByteSeconds = Annotated[int, Field(ge=0, le=MAX_BYTE_SECONDS, strict=True)]
KeyMode = Literal["live", "test"]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    schema_version: int = Field(SCHEMA_VERSION, ge=1, strict=True)
    event_id: Id = Field(description="Idempotency key chosen by the producer, e.g. a UUIDv7.")
    org_id: Id
    agent_id: Id
    run_id: Id | None = Field(None, description="One execution of an agent.")
    session_id: Id | None = None
    reservation_id: Id | None = Field(
        None,
        description="The reservation an admission check held for this usage"
        " (`POST /api/v2/quota/check` with `reserve`): the event settles it.",
    )
    key_mode: KeyMode = Field(description="`test` traffic is recorded but free.")
    ts: Timestamp = Field(description="Event time, RFC 3339 with an offset; stored as UTC.")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(
                f"{v} is newer than this Tally understands ({SCHEMA_VERSION}); "
                "upgrade Tally before sending it, or send schema_version "
                f"{SCHEMA_VERSION}"
            )
        return v

    @field_validator("ts")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        v = v.astimezone(UTC)
        if not TS_MIN <= v < TS_MAX:
            raise ValueError("must be between 2000-01-01 and 2199-12-31 (UTC)")
        return v


class LlmUsage(_Envelope):
    type: Literal["llm.usage"]
    model: Name
    input_tokens: Count = Field(description="All prompt tokens, cached ones included.")
    output_tokens: Count
    cached_input_tokens: Count = Field(0, description="The part of input_tokens read from cache.")
    mode: Literal["managed", "byok"] = "managed"
    provider: Name | None = Field(
        None, description="Who served the call (e.g. openai), when the producer knows it."
    )

    @model_validator(mode="after")
    def _cached_within_input(self) -> LlmUsage:
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError(
                "cached_input_tokens: must not exceed input_tokens (it is the cached part of them)"
            )
        return self


class ToolCall(_Envelope):
    type: Literal["tool.call"]
    connector: Name
    tool: Name
    success: Flag = Field(description="Failed calls are recorded, never billed or counted.")


class GatewayRequest(_Envelope):
    type: Literal["gateway.request"]
    model: Name
    cache_hit: Flag = False
    mode: Literal["managed", "byok"] = "managed"


class SessionStarted(_Envelope):
    type: Literal["session.started"]
    session_id: Id


class SessionHeartbeat(_Envelope):
    """Renews an idle session's lease (any event carrying the session_id does too)."""

    type: Literal["session.heartbeat"]
    session_id: Id


EndReason = Literal["ended", "expired", "ended_by_api"]


class SessionEnded(_Envelope):
    type: Literal["session.ended"]
    session_id: Id
    reason: EndReason = Field(
        "ended",
        description="`ended` (the runtime ended it), `expired` (its lease lapsed: written by"
        " Tally) or `ended_by_api` (DELETE /api/v2/sessions/{session_id}).",
    )
    last_seen_at: Timestamp | None = Field(
        None,
        description="With `expired`: the last activity of the lease that lapsed. The end"
        " counts only if the session saw nothing later (a renewal read first voids it).",
    )

    @field_validator("last_seen_at")
    @classmethod
    def _utc_seen(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        v = v.astimezone(UTC)
        if not TS_MIN <= v < TS_MAX:
            raise ValueError("must be between 2000-01-01 and 2199-12-31 (UTC)")
        return v

    @model_validator(mode="after")
    def _expiry_names_its_lease(self) -> SessionEnded:
        if self.reason == "expired" and self.last_seen_at is None:
            raise ValueError("last_seen_at: is required when reason is expired")
        return self


class StorageUsage(_Envelope):
    type: Literal["storage.usage"]
    kind: Literal["knowledge_base", "traces"]
    byte_seconds: ByteSeconds = Field(description="Bytes kept x seconds kept.")


AdmissionMeter = Literal["tokens", "tool_calls", "requests", "upstream_cost_micros", "sessions"]


class AdmissionRequested(_Envelope):
    """A strict admission check, written by the API and decided by the worker that owns the
    org, in log order (tally.domain.reservations); never counted as usage."""

    type: Literal["admission.requested"]
    reservation_id: Id
    meter: AdmissionMeter
    amount: Annotated[int, Field(ge=1, le=MAX_TOKENS, strict=True)]
    limit: Count = Field(description="The plan's limit of the meter when the check was made.")
    window_start: Timestamp | None = Field(None, description="The billing window (monthly meters).")
    window_end: Timestamp | None = None
    expires_at: Timestamp = Field(description="When the reservation lapses if not settled.")

    @field_validator("window_start", "window_end", "expires_at")
    @classmethod
    def _utc_times(cls, v: datetime | None) -> datetime | None:
        return None if v is None else v.astimezone(UTC)


Event = Annotated[
    LlmUsage
    | ToolCall
    | GatewayRequest
    | SessionStarted
    | SessionHeartbeat
    | SessionEnded
    | StorageUsage
    | AdmissionRequested,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "llm.usage",
    "tool.call",
    "gateway.request",
    "session.started",
    "session.heartbeat",
    "session.ended",
    "storage.usage",
    "admission.requested",
)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class InvalidEvent(ValueError):
    """A message that is not a valid event; `reason` names the field and the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_RULES = {
    "missing": "is required",
    "string_pattern_mismatch": "must be 1 to 128 printable ASCII characters, without spaces",
    "timezone_aware": "must carry a UTC offset (Z or +hh:mm), e.g. 2026-11-23T10:15:00Z",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
}


def _rule(error: Any) -> str:
    kind = error["type"]
    if kind in _RULES:
        return _RULES[kind]
    msg = str(error["msg"])
    if kind == "json_invalid":
        return f"is not valid JSON ({error.get('ctx', {}).get('error', msg)})"
    for prefix, replacement in (
        ("Value error, ", ""),
        ("Input should be ", "must be "),
        ("String should ", "must "),
        ("Input should ", "must "),
    ):
        if msg.startswith(prefix):
            msg = replacement + msg[len(prefix) :]
    return msg


def describe(error: ValidationError) -> str:
    """One `field: rule` per problem, joined by `; `, as a user would read it."""
    parts = []
    for e in error.errors(include_url=False):
        if e["type"] in ("union_tag_not_found", "union_tag_invalid"):
            parts.append(f"type: must be one of {', '.join(EVENT_TYPES)}")
            continue
        loc = ".".join(str(p) for p in e["loc"] if not _is_tag(p))
        rule = _rule(e)
        if not loc and e["type"] == "value_error" and ": " in rule:
            parts.append(rule)  # a rule across fields names its field itself
        else:
            parts.append(f"{loc or 'event'}: {rule}")
    return "; ".join(parts)


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and part in EVENT_TYPES


def parse_event(raw: bytes | str) -> Event:
    """Decode and validate one wire message, raising InvalidEvent with a readable reason."""
    try:
        return _adapter.validate_json(raw)
    except ValidationError as exc:
        raise InvalidEvent(describe(exc)) from None


def validate_event(obj: Any) -> Event:
    """Validate an already-decoded object (HTTP ingestion)."""
    try:
        return _adapter.validate_python(obj)
    except ValidationError as exc:
        raise InvalidEvent(describe(exc)) from None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of one event (what `tally schema events` prints)."""
    schema = _adapter.json_schema()
    schema["title"] = "Tally usage event"
    schema["description"] = (
        f"One message on usage.events, keyed by org_id; schema_version {SCHEMA_VERSION}. "
        "Unknown fields are ignored; a newer schema_version is refused."
    )
    return schema
