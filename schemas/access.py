"""Who may do what: key scopes, the audit trail of admin actions, closing an account."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

# What an org key may do. A key gets every scope unless it asks for fewer; keys issued
# before scopes existed carry every scope too (store migration 011).
Scope = Literal[
    "events:write",  # send usage events
    "quota:read",  # quota reads, admission checks, limits and the workspace
    "usage:read",  # usage breakdowns in units (tokens, calls, bytes): no money
    "billing:read",  # credits, invoices and every cost figure
    "sessions:write",  # end the org's live sessions
]
SCOPES: tuple[str, ...] = get_args(Scope)
BILLING_READ: Scope = "billing:read"  # without it, cost figures read as null
RUNTIME_SCOPES: tuple[str, ...] = ("events:write", "quota:read")  # an agent runtime's key


def all_scopes() -> list[Scope]:
    return list(get_args(Scope))


Action = Literal[
    "org.created",
    "plan.changed",
    "key.issued",
    "key.revoked",
    "credit.added",
    "overrides.changed",
    "invoice.status_changed",
    "org.closed",
    "org.restored",
    "org.purged",
]
ACTIONS: tuple[str, ...] = get_args(Action)


class AuditEntry(BaseModel):
    at: datetime = Field(description="When the action was taken (UTC).")
    actor: str = Field(
        description="Who took it: `admin:<first 12 hex of the admin key's SHA-256>`, or "
        "`tally:retention` / `tally:ops` for what Tally ran itself."
    )
    action: Action
    org_id: str
    before: dict[str, Any] | None = Field(description="The state the action changed, before.")
    after: dict[str, Any] | None = Field(description="The same state, after.")


class AuditTrail(BaseModel):
    entries: list[AuditEntry] = Field(description="Oldest first.")
    has_more: bool = Field(description="More entries match: narrow the range.")


class OrgClosure(BaseModel):
    org_id: str
    closed_at: datetime | None = Field(description="null once restored.")
    purge_after: datetime | None = Field(
        description="When its data is purged unless it is restored first."
    )


class PurgeRun(BaseModel):
    purged: list[str] = Field(description="Orgs whose data this run deleted.")
