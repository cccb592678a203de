"""Admin: subscriptions (plan changes, status) and Enterprise overrides. Needs the admin key.

Upgrades take effect at once; downgrades and cancellations at the end of the current
period, which the response states (`change.effective_at`, `pending_change`). Every change
is recorded with its time; `GET .../subscription` returns the history.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import ValidationError

from api.accounts import Account, account, plan_in_force
from api.auth import require_admin, services
from api.errors import ApiError
from api.openapi import errors
from api.routes.quota import pending_of
from api.state import Services
from api.subscriptions import now_ms
from schemas.api import (
    ChangeOut,
    OverridesOut,
    StatusChange,
    SubscriptionChange,
    SubscriptionDetail,
    SubscriptionOut,
)
from schemas.plans import Plan, PlanOverrides, apply_overrides
from tally.domain.subscriptions import Change, SubscriptionError, change_plan, change_status
from tally.store import audit

router = APIRouter(
    prefix="/api/v2/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=errors("unauthorized", "forbidden", "not_found"),
)


def _account(svc: Services, org_id: str) -> Account:
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    return account(svc.registry, svc.plans, org_id, now_ms())


def _plan(svc: Services, name: str) -> Plan:
    plan = svc.plans.get(name)
    if plan is None:
        names = ", ".join(p.name for p in svc.plans.plans)
        raise ApiError(400, "unknown_plan", f"plan {name!r} does not exist; use one of {names}")
    return plan


def change_out(c: Change) -> ChangeOut:
    return ChangeOut(
        kind=c.kind,
        plan=c.plan,
        status=c.status,
        trial_ends_at=c.trial_ends_at,
        recorded_at=c.recorded_at,
        effective_at=c.effective_at,
    )


def _out(svc: Services, org_id: str, change: Change | None) -> SubscriptionOut:
    acct = _account(svc, org_id)
    sub = acct.subscription
    return SubscriptionOut(
        org_id=org_id,
        plan=sub.plan,
        status=sub.status,
        trial_ends_at=sub.trial_ends_at,
        billing_anchor=sub.anchor,
        window_start=acct.window.start,
        window_end=acct.window.end,
        pending_change=pending_of(acct),
        change=change_out(change) if change else None,
    )


def _sub_state(acct: Account) -> dict[str, object]:
    sub = acct.subscription
    return {"plan": sub.plan, "status": sub.status, "trial_ends_at": sub.trial_ends_at}


async def _move(svc: Services, org_id: str, target: str | None, actor: str) -> SubscriptionOut:
    async with svc.registry.accounts.lock:
        acct = _account(svc, org_id)
        now = now_ms()
        sub = acct.subscription
        current = plan_in_force(svc.plans, sub.plan)
        cancel = target is None
        if cancel and current.name == svc.plans.default_plan:
            raise ApiError(
                409, "conflict", f"org {org_id!r} is on the {current.name} plan: nothing to cancel"
            )
        plan = svc.plans.default if target is None else _plan(svc, target)
        change = change_plan(sub, current, plan, acct.org.signup_date, now, cancel=cancel)
        if change is not None:
            await svc.registry.accounts.record(org_id, change)
            await _audit(svc, actor, org_id, acct, change)
        return _out(svc, org_id, change)


async def _audit(svc: Services, actor: str, org_id: str, before: Account, change: Change) -> None:
    after = {**_sub_state(before), **_sub_state(_account(svc, org_id))}
    after["change"] = change_out(change).model_dump(mode="json")
    await audit.record(
        svc.store,
        actor=actor,
        action="plan.changed",
        org_id=org_id,
        before=_sub_state(before),
        after=after,
    )


@router.get("/orgs/{org_id}/subscription", response_model=SubscriptionDetail)
async def get_subscription(org_id: str, svc: Services = Depends(services)) -> SubscriptionDetail:
    """The subscription in force now, any scheduled change, and every change recorded."""
    out = _out(svc, org_id, None)
    history = [change_out(c) for c in svc.registry.accounts.history(org_id)]
    return SubscriptionDetail(**out.model_dump(), history=history)


@router.put(
    "/orgs/{org_id}/subscription",
    response_model=SubscriptionOut,
    responses=errors("unknown_plan", "invalid_request"),
)
async def put_subscription(
    org_id: str,
    body: SubscriptionChange,
    svc: Services = Depends(services),
    actor: str = Depends(require_admin),
) -> SubscriptionOut:
    """Move the org to `plan`: an upgrade at once, a downgrade at the end of the period.

    Asking for the plan in force drops a scheduled downgrade or cancellation. An org that is
    past due or whose trial has ended downgrades at once (it has no paid period to use up).
    """
    return await _move(svc, org_id, body.plan, actor)


@router.delete(
    "/orgs/{org_id}/subscription", response_model=SubscriptionOut, responses=errors("conflict")
)
async def cancel_subscription(
    org_id: str, svc: Services = Depends(services), actor: str = Depends(require_admin)
) -> SubscriptionOut:
    """Cancel: the allowances stay until the end of the period, then the org reverts to the
    catalogue's default plan (free)."""
    return await _move(svc, org_id, None, actor)


@router.put(
    "/orgs/{org_id}/subscription/status",
    response_model=SubscriptionOut,
    responses=errors("invalid_change", "invalid_request"),
)
async def put_status(
    org_id: str,
    body: StatusChange,
    svc: Services = Depends(services),
    actor: str = Depends(require_admin),
) -> SubscriptionOut:
    """Set the payment status: `active`, `trial` (until `trial_ends_at`) or `past_due`.

    Past due, or a trial past its end, pauses new runs (the check answers 402
    `payment_required`); reads keep working.
    """
    async with svc.registry.accounts.lock:
        acct = _account(svc, org_id)
        plan = plan_in_force(svc.plans, acct.subscription.plan)
        try:
            change = change_status(
                acct.subscription, plan, body.status, body.trial_ends_at, now_ms()
            )
        except SubscriptionError as exc:
            raise ApiError(400, "invalid_change", str(exc)) from None
        if change is not None:
            await svc.registry.accounts.record(org_id, change)
            await _audit(svc, actor, org_id, acct, change)
        return _out(svc, org_id, change)


def _overrides_out(svc: Services, org_id: str) -> OverridesOut:
    acct = _account(svc, org_id)
    overrides = svc.registry.accounts.overrides.get(org_id) or PlanOverrides.model_validate({})
    return OverridesOut(org_id=org_id, plan=acct.plan.name, overrides=overrides, limits=acct.plan)


@router.get("/orgs/{org_id}/overrides", response_model=OverridesOut)
async def get_overrides(org_id: str, svc: Services = Depends(services)) -> OverridesOut:
    """The org's contract overrides and the limits they give."""
    return _overrides_out(svc, org_id)


@router.put(
    "/orgs/{org_id}/overrides",
    response_model=OverridesOut,
    responses=errors("conflict", "invalid_change", "invalid_request"),
)
async def put_overrides(
    org_id: str,
    body: PlanOverrides,
    svc: Services = Depends(services),
    actor: str = Depends(require_admin),
) -> OverridesOut:
    """Replace the org's overrides (custom plans only): a field sent overrides the plan's
    figure (`null`: unlimited), a field left out keeps it; `{}` clears them all."""
    async with svc.registry.accounts.lock:
        acct = _account(svc, org_id)
        plan = plan_in_force(svc.plans, acct.subscription.plan)
        if not plan.custom:
            raise ApiError(
                409,
                "conflict",
                f"org {org_id!r} is on the {plan.name} plan: overrides apply to custom plans "
                "(enterprise) only; move the org to one first",
            )
        try:
            apply_overrides(plan, body)
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ApiError(400, "invalid_change", problems) from None
        before = svc.registry.accounts.overrides.get(org_id)
        await svc.registry.accounts.set_overrides(org_id, body, now_ms())
        await audit.record(
            svc.store,
            actor=actor,
            action="overrides.changed",
            org_id=org_id,
            before=before.model_dump(mode="json", exclude_unset=True) if before else None,
            after=body.model_dump(mode="json", exclude_unset=True),
        )
        return _overrides_out(svc, org_id)
