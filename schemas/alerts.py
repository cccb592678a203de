"""Alert rules, alerts and webhook endpoints as the API reads and answers them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.plans import MAX

EventType = Literal[
    "usage.threshold_reached",
    "usage.threshold_resolved",
    "credits.low",
    "credits.depleted",
    "subscription.trial_ending",
    "subscription.past_due",
    "webhook.endpoint_disabled",
]


_METER = r"^[a-z][a-z0-9_]{0,63}$"  # the API document lists the meters (api.openapi)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeterAt(_Rule):
    """Fires once the meter reaches `at` in a window (unlimited meters too)."""

    meter: str = Field(pattern=_METER, description="A windowed meter of GET /api/v2/quota.")
    at: int = Field(ge=1, le=MAX)


class MeterPercent(_Rule):
    """Fires once the meter reaches `percent` of its limit in a window."""

    meter: str = Field(pattern=_METER, description="A windowed meter of GET /api/v2/quota.")
    percent: int = Field(ge=1, le=1000)


class CreditsBelow(_Rule):
    """Fires once per billing window while the credit balance is below `below`."""

    meter: Literal["credits"]
    below: int = Field(ge=1, le=MAX, description="Micro-units.")


class TrialDays(_Rule):
    """Fires once `days` before a trial ends."""

    meter: Literal["trial"]
    days: int = Field(ge=1, le=365)


RuleIn = MeterAt | MeterPercent | CreditsBelow | TrialDays


class RulesIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"rules": [{"meter": "tool_calls", "at": 50}, {"meter": "tokens", "percent": 90}]}
            ]
        },
    )

    rules: list[RuleIn] = Field(max_length=100)


class RuleOut(BaseModel):
    meter: str
    at: int | None = None
    percent: int | None = None
    below: int | None = None
    days: int | None = None
    default: bool = Field(description="A default rule (80% and 100% of every limit, trial).")


class RulesOut(BaseModel):
    rules: list[RuleOut] = Field(description="Every rule in force: the defaults, then the org's.")


class AlertData(BaseModel):
    id: str
    org_id: str
    rule: str
    meter: str
    scope: str
    window_start: datetime
    window_end: datetime
    threshold: int
    limit: int | None
    used: int


class AlertOut(BaseModel):
    type: EventType
    timestamp: datetime
    data: AlertData


class AlertList(BaseModel):
    alerts: list[AlertOut] = Field(description="Newest first.")


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://hooks.example.com/tally", "events": ["usage.threshold_reached"]}
            ]
        },
    )

    url: str = Field(min_length=1, max_length=2048)
    events: list[EventType] = Field(
        min_length=1, max_length=16, description="Event types to receive."
    )


class WebhookCreated(BaseModel):
    id: str
    secret: str = Field(description="The signing secret (`whsec_...`); shown only here.")


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    state: Literal["enabled", "disabled"]
    failing_since: datetime | None
    created_at: datetime


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null if none came.")
    error: str


class DeliveryOut(BaseModel):
    id: str = Field(description="The delivery id: the message's `webhook-id`.")
    type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None
    created_at: datetime


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut] = Field(description="Newest first.")
