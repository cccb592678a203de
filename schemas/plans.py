"""The plan catalogue: every allowance a plan sets, as data. `None` means unlimited.

The shipped catalogue is `tally/data/plans.json`; `TALLY_PLANS_FILE` points at a user's own.
It is validated once at start-up: a file that does not validate stops Tally with a message
naming the plan and the field. `docs/plans.md` says where every shipped figure comes from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Limit = int | None
MAX = 10**18  # far beyond any allowance; keeps every figure a signed 64-bit integer

# The allowances an Enterprise (custom) plan may override per org.
OVERRIDABLE = (
    "tokens_per_period",
    "concurrent_sessions",
    "tool_calls_per_month",
    "requests_per_month",
    "requests_per_minute",
    "requests_per_day",
    "upstream_cost_micros_per_month",
    "runs_per_month",
    "managed_models",
    "byok",
    "api_keys",
    "log_retention_days",
    "cache_ttl_hours",
    "semantic_vector_pool",
    "workspaces",
    "included_credits_micros",
)


def _models(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    if any(not m.strip() for m in v):
        raise ValueError("model names must not be empty")
    if len(set(v)) != len(v):
        raise ValueError("model names must be unique")
    return v


class _Allowances(BaseModel):
    """The figures a plan sets; shared by plans and per-org overrides."""

    tokens_per_period: Limit = Field(
        None, ge=0, le=MAX, description="LLM tokens per billing period (input + output, live keys)."
    )
    concurrent_sessions: Limit = Field(None, ge=0, le=MAX, description="Sessions running at once.")
    tool_calls_per_month: Limit = Field(
        None, ge=0, le=MAX, description="Successful live tool calls per billing period."
    )
    requests_per_month: Limit = Field(
        None, ge=0, le=MAX, description="Live gateway requests per billing period."
    )
    requests_per_minute: Limit = Field(
        None, ge=0, le=MAX, description="Burst: requests per UTC minute."
    )
    requests_per_day: Limit = Field(None, ge=0, le=MAX, description="Burst: requests per UTC day.")
    upstream_cost_micros_per_month: Limit = Field(
        None,
        ge=0,
        le=MAX,
        description="Fair-use budget for managed-mode upstream cost per period; BYOK is exempt.",
    )
    runs_per_month: Limit = Field(
        None,
        ge=0,
        le=MAX,
        description="Live runs per billing period (a run counts once, at its first live event).",
    )
    managed_models: list[str] | None = Field(
        None, description="Models forwarded in managed mode; null allows every model."
    )
    byok: bool = Field(
        False, description="Bring-your-own-key is offered; it lifts the whitelist and the budget."
    )
    api_keys: Limit = Field(
        None, ge=0, le=MAX, description="Active API keys per mode (live keys and test keys each)."
    )
    log_retention_days: Limit = Field(None, ge=1, le=MAX, description="Days request logs are kept.")
    cache_ttl_hours: Limit = Field(None, ge=0, le=MAX, description="Response cache time-to-live.")
    semantic_vector_pool: Limit = Field(
        None, ge=0, le=MAX, description="Vectors in the semantic cache."
    )
    workspaces: Limit = Field(None, ge=0, le=MAX, description="Workspaces per org.")
    included_credits_micros: int = Field(
        0, ge=0, le=MAX, description="Credits included each period."
    )

    @field_validator("managed_models")
    @classmethod
    def _model_names(cls, v: list[str] | None) -> list[str] | None:
        return _models(v)


class _Identity(BaseModel):
    """What names and orders a plan; listed first in its JSON."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    display_name: str = Field(min_length=1)
    price_micros_per_month: int | None = Field(
        None,
        ge=0,
        le=MAX,
        description="List price; null when not published (contract or pricing page).",
    )
    rank: int = Field(ge=0, description="Orders plans: a higher rank is an upgrade.")
    anchor: Literal["signup", "billing_date"] = Field(
        description="Monthly windows start on the signup day or on the subscription billing date."
    )
    custom: bool = Field(False, description="Allowances are negotiated: per-org overrides apply.")


class Plan(_Allowances, _Identity):
    """One plan: who it is (name, price, rank, anchor), then its allowances."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "free",
                    "display_name": "Free",
                    "price_micros_per_month": 0,
                    "rank": 0,
                    "anchor": "signup",
                    "tokens_per_period": 15000000,
                    "concurrent_sessions": 3,
                    "tool_calls_per_month": 1000,
                    "requests_per_month": 10000,
                    "requests_per_minute": 10,
                    "requests_per_day": 500,
                    "upstream_cost_micros_per_month": 5000000,
                    "runs_per_month": 500,
                    "managed_models": ["gpt-4o-mini"],
                    "byok": False,
                    "api_keys": 1,
                    "log_retention_days": 7,
                    "cache_ttl_hours": 24,
                    "semantic_vector_pool": 1000,
                    "workspaces": 1,
                    "included_credits_micros": 0,
                    "features": ["smart_routing:basic", "dashboard", "community_support"],
                    "custom": False,
                }
            ]
        },
    )

    features: list[str] = Field(default_factory=list, description="Included features, by name.")

    @property
    def free(self) -> bool:
        return self.price_micros_per_month == 0

    @model_validator(mode="after")
    def _bursts_fit(self) -> Plan:
        chain = [
            ("requests_per_minute", self.requests_per_minute),
            ("requests_per_day", self.requests_per_day),
            ("requests_per_month", self.requests_per_month),
        ]
        known = [(n, v) for n, v in chain if v is not None]
        for (small, a), (big, b) in zip(known, known[1:], strict=False):
            if a > b:
                raise ValueError(f"{small} ({a}) must not exceed {big} ({b})")
        return self


class PlanOverrides(_Allowances):
    """Per-org allowances for a custom (Enterprise) plan.

    Only the fields present are overridden: a field sent as `null` makes that meter
    unlimited, a field left out keeps the plan's figure.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {"tokens_per_period": 2000000000, "concurrent_sessions": 500, "api_keys": None}
            ]
        },
    )

    def updates(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def apply_overrides(plan: Plan, overrides: PlanOverrides | None) -> Plan:
    """The plan with an org's overrides applied; overrides only apply to custom plans."""
    if overrides is None or not plan.custom:
        return plan
    updates = overrides.updates()
    return plan.model_validate({**plan.model_dump(), **updates}) if updates else plan


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    default_plan: str = Field(description="New orgs and cancelled subscriptions land here.")
    plans: list[Plan] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        names = [p.name for p in self.plans]
        if len(set(names)) != len(names):
            raise ValueError("plan names must be unique")
        ranks = [p.rank for p in self.plans]
        if len(set(ranks)) != len(ranks):
            raise ValueError("plan ranks must be unique: they decide upgrade or downgrade")
        default = self.get(self.default_plan)
        if default is None:
            raise ValueError(f"default_plan {self.default_plan!r} is not in the catalogue")
        if default.rank != min(ranks):
            raise ValueError(
                f"default_plan {self.default_plan!r} must have the lowest rank: "
                "a cancellation is a downgrade to it"
            )
        return self

    def get(self, name: str) -> Plan | None:
        for plan in self.plans:
            if plan.name == name:
                return plan
        return None

    @property
    def default(self) -> Plan:
        plan = self.get(self.default_plan)
        assert plan is not None  # checked by the validator
        return plan
