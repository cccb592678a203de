"""Admission checks: `POST /api/v2/quota/check`, its request and its answer (docs/quota.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.api import _example
from schemas.events import Id

Meter = Literal["tokens", "tool_calls", "requests", "upstream_cost_micros", "sessions", "runs"]


class CheckRequest(BaseModel):
    """What the caller is about to do."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"meter": "requests", "amount": 1, "model": "gpt-4o-mini", "mode": "managed"},
                {"meter": "sessions"},
                {"meter": "tool_calls", "amount": 1},
                {"meter": "runs", "run_id": "run-2026-06-14-0042"},
            ]
        },
    )

    meter: Meter
    amount: int = Field(1, ge=1, le=10**12, description="How much is about to be used.")
    model: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The model of an LLM call; when absent the workspace default model counts.",
    )
    mode: Literal["managed", "byok"] = Field(
        "managed", description="`byok`: the org's own provider key (lifts the whitelist)."
    )
    reserve: int | None = Field(
        None,
        ge=1,
        le=10**12,
        description="Hold this much against the meter (it is also the amount checked) until"
        " a usage event carrying the answer's `reservation_id` settles it, or `ttl_s` passes.",
    )
    ttl_s: int = Field(
        60, ge=1, le=3600, description="How long a reservation made with `reserve` holds."
    )
    run_id: Id | None = Field(
        None,
        description="`runs`: the run about to go on; a run already counted this billing "
        "period is never refused by the runs cap.",
    )


class CheckAllowed(BaseModel):
    """The org may go on; the figures are those of the meter asked about, before `amount`."""

    model_config = _example(
        allowed=True,
        meter="tool_calls",
        amount=1,
        limit=1000,
        used=420,
        remaining=580,
        reset_at="2026-07-01T00:00:00Z",
    )

    allowed: Literal[True]
    meter: Meter
    amount: int
    limit: int | None
    used: int | None = Field(
        description="For strict checks: used (or running) plus held by reservations."
    )
    remaining: int | None
    reset_at: datetime | None = Field(description="When the window ends; null for sessions.")
    reservation_id: str | None = Field(
        None,
        description="Strict checks (sessions, `reserve`): send it on the usage event (for"
        " sessions, the `session.started`) to settle the reservation.",
    )
    expires_at: datetime | None = Field(
        None, description="When the reservation lapses if nothing settles it."
    )
