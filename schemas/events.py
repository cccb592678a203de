"""The usage-event wire contract: an envelope and one model per `type`.

Wire format: one JSON object per Kafka message on `usage.events`, keyed by `org_id`.
Unknown fields are ignored (producers may add fields before consumers know them); an event
whose `schema_version` is newer than `SCHEMA_VERSION` is refused, never half-understood.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
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

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Count = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
ByteSeconds = Annotated[int, Field(ge=0, le=MAX_BYTE_SECONDS, strict=True)]
KeyMode = Literal["live", "test"]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    schema_version: int = Field(SCHEMA_VERSION, ge=1, strict=True)
    event_id: Id = Field(description="Idempotency key chosen by the producer, e.g. a UUIDv7.")
    org_id: Id
    agent_id: Id
    run_id: Id | None = Field(None, description="One execution of an agent.")
    session_id: Id | None = None
    key_mode: KeyMode = Field(description="`test` traffic is recorded but free.")
    ts: AwareDatetime = Field(description="Event time, RFC 3339 with an offset; stored as UTC.")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is newer than this consumer understands "
                f"({SCHEMA_VERSION}); upgrade Tally before sending it"
            )
        return v

    @field_validator("ts")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)


class LlmUsage(_Envelope):
    type: Literal["llm.usage"]
    model: Name
    input_tokens: Count = Field(description="All prompt tokens, cached ones included.")
    output_tokens: Count
    cached_input_tokens: Count = Field(0, description="The part of input_tokens read from cache.")
    mode: Literal["managed", "byok"] = "managed"

    @model_validator(mode="after")
    def _cached_within_input(self) -> LlmUsage:
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens must not exceed input_tokens")
        return self


class ToolCall(_Envelope):
    type: Literal["tool.call"]
    connector: Name
    tool: Name
    success: bool = Field(description="Failed calls are recorded, never billed or counted.")


class GatewayRequest(_Envelope):
    type: Literal["gateway.request"]
    model: Name
    cache_hit: bool = False
    mode: Literal["managed", "byok"] = "managed"


class SessionStarted(_Envelope):
    type: Literal["session.started"]
    session_id: Id


class SessionEnded(_Envelope):
    type: Literal["session.ended"]
    session_id: Id


class StorageUsage(_Envelope):
    type: Literal["storage.usage"]
    kind: Literal["knowledge_base", "traces"]
    byte_seconds: ByteSeconds


Event = Annotated[
    LlmUsage | ToolCall | GatewayRequest | SessionStarted | SessionEnded | StorageUsage,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "llm.usage",
    "tool.call",
    "gateway.request",
    "session.started",
    "session.ended",
    "storage.usage",
)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class InvalidEvent(ValueError):
    """A message that is not a valid event; `reason` names the field and the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(error: ValidationError) -> str:
    """One line per problem: `field: rule`, as a user would read it."""
    parts = []
    for e in error.errors(include_url=False):
        if e["type"] in ("union_tag_not_found", "union_tag_invalid"):
            parts.append(f"type: must be one of {', '.join(EVENT_TYPES)}")
            continue
        loc = ".".join(str(p) for p in e["loc"] if not _is_tag(p))
        parts.append(f"{loc or 'event'}: {e['msg']}")
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
    return _adapter.json_schema()
