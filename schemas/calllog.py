"""Response model of the call log: an org's events one by one, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class LogEvent(BaseModel):
    """One stored event with what it was billed."""

    event_id: str
    type: str = Field(description="The event type, e.g. llm.usage or tool.call.")
    ts: datetime = Field(description="Event time (UTC).")
    agent_id: str
    run_id: str
    session_id: str
    key_mode: Literal["live", "test"]
    status: Literal["success", "failed"] = Field(description="`failed`: a failed tool call.")
    line_item: str = Field(description="llm, tool_calls, requests, storage or sessions.")
    item: str = Field(description="The model, connector or storage kind.")
    quantity: int = Field(description="Tokens, calls, requests or byte-seconds.")
    billable: int = Field(description="The part of quantity that counts against limits.")
    cost_micros: int | None = Field(
        description="What the event cost, in micro-units; null for a key without"
        " `billing:read` (cost figures are billing data)."
    )
    priced: bool = Field(description="False when the price book had no rate for it (cost 0).")
    billed: bool = Field(description="Whether the event is billed.")
    not_billed_reason: Literal["failed", "test_key"] | None = Field(
        description="Why it was not billed: a failed tool call, or test-key traffic."
    )
    model: str | None = Field(None, description="LLM calls and gateway requests.")
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    mode: str | None = Field(None, description="managed or byok (LLM calls, requests).")
    connector: str | None = Field(None, description="Tool calls.")
    tool: str | None = Field(None, description="Tool calls.")
    cache_hit: bool | None = Field(None, description="Gateway requests.")
    storage_kind: str | None = Field(None, description="Storage usage.")


class LogPage(BaseModel):
    events: list[LogEvent] = Field(description="Newest first, by (ts, event_id).")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (same filters); null on the last."
    )
