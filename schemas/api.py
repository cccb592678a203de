"""Request and response models of the HTTP API: the OpenAPI document is built from these."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["billing_limit_reached"])
    message: str


class ErrorBody(BaseModel):
    """Every error Tally returns has this one shape."""

    error: ErrorDetail


class TokenQuota(BaseModel):
    """Exactly the five fields of the published token-quota contract."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "limit": 15000000,
                    "used": 4200000,
                    "remaining": 10800000,
                    "window_start": "2026-06-01T00:00:00Z",
                    "window_end": "2026-07-01T00:00:00Z",
                }
            ]
        }
    )

    limit: int | None = Field(description="Tokens allowed this period; null means unlimited.")
    used: int | None = Field(description="Tokens used; null if momentarily unavailable.")
    remaining: int | None = Field(description="max(limit - used, 0).")
    window_start: datetime
    window_end: datetime | None


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    org_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    plan: str = "free"
    signup_date: date


class OrgOut(BaseModel):
    org_id: str
    plan: str
    signup_date: date
    created_at: datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["live", "test"] = "live"


class KeyCreated(BaseModel):
    key: str = Field(description="Shown once; only a hash is stored.")
    key_id: str
    org_id: str
    mode: Literal["live", "test"]


class Health(BaseModel):
    status: Literal["ok", "starting"]
    checks: dict[str, bool] = {}


class EventResult(BaseModel):
    """What became of one event of an ingestion batch, by its position in the array."""

    index: int
    status: Literal["accepted", "rejected", "failed"] = Field(
        description="accepted: durably queued for usage.events; rejected: invalid, do not "
        "retry as is; failed: could not be queued now, retry later with the same event_id."
    )
    event_id: str | None = None
    error: str | None = Field(default=None, description="`field: rule` for a rejected event.")


class IngestResponse(BaseModel):
    """Per-event results of `POST /api/v2/events`, in the order of the request."""

    accepted: int
    rejected: int
    failed: int
    results: list[EventResult]
