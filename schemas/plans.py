"""The plan catalogue: every allowance a plan sets, as data. `None` means unlimited."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Limit = int | None


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    display_name: str
    price_micros_per_month: int = Field(ge=0)
    rank: int = Field(ge=0, description="Orders plans: a higher rank is an upgrade.")
    anchor: Literal["signup", "billing_date"] = Field(
        description="Monthly windows start on the signup day or on the billing date."
    )
    tokens_per_period: Limit = Field(None, ge=0)
    concurrent_sessions: Limit = Field(None, ge=0)
    tool_calls_per_month: Limit = Field(None, ge=0)
    requests_per_month: Limit = Field(None, ge=0)
    requests_per_minute: Limit = Field(None, ge=0)
    requests_per_day: Limit = Field(None, ge=0)
    upstream_cost_micros_per_month: Limit = Field(
        None, ge=0, description="Fair-use budget for managed-mode upstream cost; BYOK is exempt."
    )
    managed_models: list[str] | None = Field(
        None, description="Models forwarded in managed mode; None allows every model."
    )
    byok: bool = Field(False, description="Bring-your-own-key lifts the managed-model whitelist.")
    api_keys: Limit = Field(None, ge=0)
    log_retention_days: int = Field(ge=1)
    cache_ttl_hours: Limit = Field(None, ge=0)
    semantic_vector_pool: Limit = Field(None, ge=0)
    included_credits_micros: int = Field(0, ge=0)
    custom: bool = Field(False, description="Allowances are negotiated: per-org overrides apply.")


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    default_plan: str
    plans: list[Plan]

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        names = [p.name for p in self.plans]
        if len(set(names)) != len(names):
            raise ValueError("plan names must be unique")
        if self.default_plan not in names:
            raise ValueError(f"default_plan {self.default_plan!r} is not in the catalogue")
        return self

    def get(self, name: str) -> Plan | None:
        for plan in self.plans:
            if plan.name == name:
                return plan
        return None
