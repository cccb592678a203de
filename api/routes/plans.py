"""The plan catalogue, the calling org's live limits, and its workspace settings."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends

from api.accounts import account
from api.auth import require_scope, services
from api.openapi import errors
from api.registry import ApiKey
from api.routes.quota import pending_of
from api.state import Services
from api.subscriptions import now_ms
from schemas.api import LimitsOut, Workspace, WorkspaceOut
from schemas.plans import Catalogue

router = APIRouter(prefix="/api/v2", tags=["plans"])


@router.get("/plans", response_model=Catalogue)
async def plans(svc: Services = Depends(services)) -> Catalogue:
    """Every plan and allowance, as loaded at start-up; `null` means unlimited. Public."""
    return svc.plans


@router.get("/limits", response_model=LimitsOut, responses=errors("unauthorized"))
async def limits(
    key: ApiKey = Depends(require_scope("quota:read")), svc: Services = Depends(services)
) -> LimitsOut:
    """The calling org's live limits: its plan in force, with any contract overrides."""
    acct = account(svc.registry, svc.plans, key.org_id, datetime.now(UTC))
    sub = acct.subscription
    return LimitsOut(
        org_id=key.org_id,
        plan=acct.plan.name,
        status=sub.status,
        trial_ends_at=sub.trial_ends_at,
        pending_change=pending_of(acct),
        billing_anchor=acct.anchor,
        window_start=acct.window.start,
        window_end=acct.window.end,
        overridden=list(acct.overridden),
        limits=acct.plan,
    )


@router.get("/workspace", response_model=WorkspaceOut, responses=errors("unauthorized"))
async def get_workspace(
    key: ApiKey = Depends(require_scope("quota:read")), svc: Services = Depends(services)
) -> WorkspaceOut:
    """The calling org's workspace settings."""
    model = svc.registry.accounts.default_models.get(key.org_id)
    return WorkspaceOut(org_id=key.org_id, default_model=model)


@router.put(
    "/workspace", response_model=WorkspaceOut, responses=errors("unauthorized", "invalid_request")
)
async def put_workspace(
    body: Workspace,
    key: ApiKey = Depends(require_scope("billing:read")),
    svc: Services = Depends(services),
) -> WorkspaceOut:
    """Set the workspace default model, used when a request names none.

    Any model may be set; a managed-mode check refuses one outside the plan's whitelist
    with `plan_limit_error`, pointing here.
    """
    await svc.registry.accounts.set_default_model(key.org_id, body.default_model, now_ms())
    return WorkspaceOut(org_id=key.org_id, default_model=body.default_model)
