"""Request and response models of the HTTP API: the OpenAPI document is built from these."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.access import RUNTIME_SCOPES, Scope, all_scopes
from schemas.plans import Plan, PlanOverrides


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
    signup_date: date = Field(
        ge=date(1970, 1, 1),
        le=date(2149, 6, 6),
        description="Free-plan windows start on its day: 1970-01-01 to 2149-06-06.",
        # JSON Schema has no bounds for a date: the same days as a pattern.
        json_schema_extra={
            "pattern": r"^(19[7-9][0-9]|20[0-9]{2}|21[0-3][0-9]|214[0-8])-"
            r"|^2149-0[1-5]-|^2149-06-0[1-6]$"
        },
    )


class OrgOut(BaseModel):
    org_id: str
    plan: str
    signup_date: date
    created_at: datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"mode": "live", "scopes": list(RUNTIME_SCOPES)}]},
    )

    mode: Literal["live", "test"] = "live"
    scopes: list[Scope] = Field(
        default_factory=all_scopes,
        min_length=1,
        description="What the key may do; every scope when left out.",
    )


class KeyCreated(BaseModel):
    key: str = Field(description="Shown once; only a hash is stored.")
    key_id: str
    org_id: str
    mode: Literal["live", "test"]
    scopes: list[Scope]


class Health(BaseModel):
    status: Literal["ok", "starting"]
    checks: dict[str, bool] = {}


def _example(**values: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [values]})


_MONTH = {"window_start": "2026-06-01T00:00:00Z", "window_end": "2026-07-01T00:00:00Z"}


class MeterQuota(BaseModel):
    """One meter over one window; `null` limit means unlimited, `null` used unavailable."""

    model_config = _example(limit=1000, used=420, remaining=580, **_MONTH)

    limit: int | None = Field(description="Allowed in the window; null means unlimited.")
    used: int | None = Field(description="Used so far; null if momentarily unavailable.")
    remaining: int | None = Field(description="max(limit - used, 0); null if either is.")
    window_start: datetime
    window_end: datetime | None


_MINUTE = {
    "limit": 10,
    "used": 2,
    "remaining": 8,
    "window_start": "2026-06-10T12:34:00Z",
    "window_end": "2026-06-10T12:35:00Z",
}
_DAY = {
    "limit": 500,
    "used": 31,
    "remaining": 469,
    "window_start": "2026-06-10T00:00:00Z",
    "window_end": "2026-06-11T00:00:00Z",
}


class RequestQuota(MeterQuota):
    """Monthly gateway requests, with the per-minute and per-day burst windows."""

    model_config = _example(
        limit=10000, used=1200, remaining=8800, **_MONTH, minute=_MINUTE, day=_DAY
    )

    minute: MeterQuota = Field(description="The current UTC minute.")
    day: MeterQuota = Field(description="The current UTC day.")


class SessionQuota(BaseModel):
    """Concurrent sessions: running now against the plan's limit."""

    model_config = _example(limit=3, active=1, remaining=2)

    limit: int | None = Field(description="Sessions allowed at once; null means unlimited.")
    active: int | None = Field(description="Sessions running now; null if unavailable.")
    remaining: int | None


class QuotaMeters(BaseModel):
    tokens: MeterQuota
    tool_calls: MeterQuota
    requests: RequestQuota
    upstream_cost_micros: MeterQuota = Field(
        description="Managed-mode upstream cost against the fair-use budget, in micro-USD."
    )
    sessions: SessionQuota
    runs: MeterQuota = Field(
        description="Live runs this billing period: each counts once, at its first live event."
    )


class PendingChange(BaseModel):
    """A downgrade or cancellation waiting for the end of the period."""

    model_config = _example(plan="free", effective_at="2026-07-01T00:00:00Z")

    plan: str
    effective_at: datetime


Status = Literal["active", "trial", "past_due"]


class Reserved(BaseModel):
    """What admitted reservations hold, per meter (`POST /api/v2/quota/check`)."""

    tokens: int | None
    tool_calls: int | None
    requests: int | None
    upstream_cost_micros: int | None
    sessions: int | None


class QuotaOverview(BaseModel):
    """Every meter of the calling org in every window, in one read."""

    model_config = _example(
        org_id="acme",
        plan="free",
        status="active",
        trial_ends_at=None,
        pending_change=None,
        **_MONTH,
        meters={
            "tokens": {"limit": 15000000, "used": 4200000, "remaining": 10800000, **_MONTH},
            "tool_calls": {"limit": 1000, "used": 420, "remaining": 580, **_MONTH},
            "requests": {
                "limit": 10000,
                "used": 1200,
                "remaining": 8800,
                **_MONTH,
                "minute": _MINUTE,
                "day": _DAY,
            },
            "upstream_cost_micros": {
                "limit": 5000000,
                "used": 1250000,
                "remaining": 3750000,
                **_MONTH,
            },
            "sessions": {"limit": 3, "active": 1, "remaining": 2},
            "runs": {"limit": 500, "used": 42, "remaining": 458, **_MONTH},
        },
        reserved={
            "tokens": 2000,
            "tool_calls": 0,
            "requests": 0,
            "upstream_cost_micros": 0,
            "sessions": 1,
        },
    )

    org_id: str
    plan: str = Field(description="The plan in force now.")
    status: Status
    trial_ends_at: datetime | None
    pending_change: PendingChange | None
    window_start: datetime = Field(description="Start of the current billing period (UTC).")
    window_end: datetime
    meters: QuotaMeters
    reserved: Reserved = Field(
        description="Held by admitted strict checks not yet settled or lapsed, per meter:"
        " apart from `used`, which counts only what was used."
    )


class LimitsOut(BaseModel):
    """The calling org's live limits: read these rather than hard-coding plan figures."""

    org_id: str
    plan: str
    status: Status
    trial_ends_at: datetime | None
    pending_change: PendingChange | None
    billing_anchor: date = Field(description="Monthly windows start on this date's day.")
    window_start: datetime
    window_end: datetime
    overridden: list[str] = Field(description="Fields set for this org by its contract.")
    limits: Plan = Field(description="The plan in force, with the org's overrides applied.")


class SubscriptionChange(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"plan": "pro"}]})

    plan: str = Field(min_length=1, max_length=32)


class StatusChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"status": "trial", "trial_ends_at": "2026-07-15T00:00:00Z"},
                {"status": "past_due"},
                {"status": "active"},
            ]
        },
    )

    status: Status
    trial_ends_at: AwareDatetime | None = Field(
        None,
        ge=datetime(1970, 1, 1, tzinfo=UTC),
        lt=datetime(2200, 1, 1, tzinfo=UTC),
        description="Required for `trial`; from 1970-01-01T00:00:00Z, before 2200-01-01T00:00:00Z.",
        # JSON Schema has no bounds for a time: the years as a pattern (the UTC offset moves
        # the bounds by hours, which the description states exactly).
        json_schema_extra={"pattern": r"^(19[7-9][0-9]|2[01][0-9]{2})-"},
    )


class ChangeOut(BaseModel):
    """One recorded change, with when it was recorded and when it takes effect."""

    model_config = _example(
        kind="cancel",
        plan="free",
        status="active",
        trial_ends_at=None,
        recorded_at="2026-06-20T09:30:00Z",
        effective_at="2026-07-01T00:00:00Z",
    )

    kind: Literal["upgrade", "downgrade", "cancel", "resume", "status"]
    plan: str | None
    status: Status | None
    trial_ends_at: datetime | None
    recorded_at: datetime
    effective_at: datetime


class SubscriptionOut(BaseModel):
    model_config = _example(
        org_id="acme",
        plan="developer",
        status="active",
        trial_ends_at=None,
        billing_anchor="2026-06-01",
        **_MONTH,
        pending_change={"plan": "free", "effective_at": "2026-07-01T00:00:00Z"},
        change={
            "kind": "cancel",
            "plan": "free",
            "status": "active",
            "trial_ends_at": None,
            "recorded_at": "2026-06-20T09:30:00Z",
            "effective_at": "2026-07-01T00:00:00Z",
        },
    )

    org_id: str
    plan: str = Field(description="The plan in force now.")
    status: Status
    trial_ends_at: datetime | None
    billing_anchor: date
    window_start: datetime
    window_end: datetime
    pending_change: PendingChange | None
    change: ChangeOut | None = Field(
        None, description="What this request recorded; null when nothing changed."
    )


class SubscriptionDetail(SubscriptionOut):
    history: list[ChangeOut] = Field(description="Every change, in the order recorded.")


class OverridesOut(BaseModel):
    org_id: str
    plan: str
    overrides: PlanOverrides
    limits: Plan


class KeyOut(BaseModel):
    model_config = _example(
        key_id="3f9a0c1b2d4e",
        org_id="acme",
        mode="live",
        scopes=["events:write", "quota:read"],
        created_at="2026-06-01T10:00:00Z",
        revoked=False,
    )

    key_id: str
    org_id: str
    mode: Literal["live", "test"]
    scopes: list[Scope]
    created_at: datetime
    revoked: bool


class KeyList(BaseModel):
    keys: list[KeyOut]


class Workspace(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"default_model": "gpt-4o-mini"}]}
    )

    default_model: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Used when a request names no model; checked against the plan's whitelist.",
    )


class WorkspaceOut(Workspace):
    org_id: str


class EventResult(BaseModel):
    """What became of one event of an ingestion batch, by its position in the array."""

    index: int
    status: Literal["accepted", "rejected", "failed"] = Field(
        description="accepted: stored by Tally (counted; never send it again); rejected: "
        "invalid, do not retry as is; failed: could not be queued now, retry later with the "
        "same event_id."
    )
    event_id: str | None = None
    error: str | None = Field(default=None, description="`field: rule` for a rejected event.")


class IngestResponse(BaseModel):
    """Per-event results of `POST /api/v2/events`, in the order of the request."""

    accepted: int
    rejected: int
    failed: int
    stored: bool = Field(
        description="Always true in a 2xx answer: every accepted event is stored (end-to-end"
        " acknowledgement), so a client never needs to send it again. When that cannot be"
        " confirmed in time the answer is 503 instead, and sending the batch again is harmless"
        " (events are deduplicated by event_id)."
    )
    results: list[EventResult]
