"""Response models of the usage reports and credits: where the money went.

Money is integer micro-units (1,000,000 = 1 unit of the price book's currency); quantities
are integers; days are UTC dates, ranges half-open (`to` is the first day not counted).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Figures(BaseModel):
    """What was used and what it cost, over a set of usage rows."""

    events: int = Field(description="Events recorded (every type).")
    tokens: int = Field(description="LLM tokens, input plus output.")
    input_tokens: int = Field(description="Prompt tokens, cached ones included.")
    output_tokens: int
    cached_input_tokens: int
    tool_calls: int = Field(description="Tool calls made, failed ones included.")
    billable_tool_calls: int = Field(
        description="Tool calls that count against the cap: live and successful."
    )
    requests: int = Field(description="Gateway requests.")
    storage_byte_seconds: int = Field(description="Storage used, in byte-seconds.")
    cost_micros: int | None = Field(
        description="Cost in micro-units; null for a key without the billing:read scope."
    )
    unpriced: int = Field(description="Events with no price in the price book (cost 0).")


class BreakdownRow(Figures):
    group: dict[str, str] = Field(
        description="The value of each group_by dimension for this row, e.g. "
        '{"day": "2026-11-03", "agent": "support-bot"}.'
    )


class Breakdown(BaseModel):
    from_: date = Field(serialization_alias="from", description="First day counted (UTC).")
    to: date = Field(description="First day not counted (UTC): the range is [from, to).")
    group_by: list[str]
    key_mode: Literal["live", "test", "all"]
    rows: list[BreakdownRow]
    total: Figures = Field(description="The whole range; every grouping's rows sum to it.")


class DailyPoint(Figures):
    day: date


class DailySeries(BaseModel):
    from_: date = Field(serialization_alias="from")
    to: date
    key_mode: Literal["live", "test", "all"]
    days: list[DailyPoint] = Field(description="Every day of [from, to), zeros included.")
    total: Figures


class RunLineItem(BaseModel):
    agent_id: str
    line_item: str = Field(description="llm, tool_calls, requests, storage or sessions.")
    item: str = Field(description="The model, the connector or the storage kind.")
    key_mode: Literal["live", "test"]
    first_ts: datetime
    last_ts: datetime
    events: int
    quantity: int = Field(
        description="Tokens, calls, requests or byte-seconds, depending on the line item."
    )
    billable: int = Field(description="The part of quantity that counts against a limit.")
    cost_micros: int | None = Field(
        description="Cost in micro-units; null for a key without the billing:read scope."
    )
    unpriced: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int


class RunUsage(BaseModel):
    run_id: str
    agent_ids: list[str]
    first_ts: datetime
    last_ts: datetime
    line_items: list[RunLineItem]
    total: Figures


class RunSummary(Figures):
    run_id: str
    first_ts: datetime
    last_ts: datetime


class AgentRuns(BaseModel):
    agent_id: str
    from_: date = Field(serialization_alias="from")
    to: date
    key_mode: Literal["live", "test", "all"]
    runs: list[RunSummary] = Field(description="Runs that started in [from, to), newest first.")
    has_more: bool = Field(description="More runs started in the range than `limit`.")


class TopUpCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_micros: int = Field(gt=0, le=10**13, description="Credits to add, in micro-units.")
    idempotency_key: str = Field(
        min_length=1,
        max_length=128,
        description="Chosen by the caller; a top-up retried with the same key is applied once.",
    )
    note: str = Field("", max_length=500)


class TopUpOut(BaseModel):
    org_id: str
    idempotency_key: str
    amount_micros: int
    note: str
    created_at: datetime
    replayed: bool = Field(description="True when this key had been applied before.")
    balance_micros: int = Field(description="The org's balance after this request.")


class CreditEntry(BaseModel):
    at: datetime
    kind: Literal["topup", "usage"]
    amount_micros: int = Field(description="Positive for a top-up, negative for usage.")
    balance_micros: int = Field(description="The balance after this entry.")
    idempotency_key: str | None = None
    note: str | None = None
    day: date | None = Field(None, description="For usage: the UTC day it was used.")


class Credits(BaseModel):
    org_id: str
    balance_micros: int = Field(description="topped_up_micros - spent_micros; may be negative.")
    topped_up_micros: int
    spent_micros: int = Field(description="Cost of live usage since the account opened.")
    started_at: datetime | None = Field(
        description="The first top-up: usage from then on is debited. Null before any."
    )
    history: list[CreditEntry] = Field(description="Oldest first.")
