"""Admin: orgs and their API keys. Needs the admin key."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends

from api.accounts import account
from api.auth import require_admin, services
from api.closure import state
from api.errors import ApiError
from api.openapi import errors
from api.registry import ApiKey, Conflict
from api.state import Services
from api.subscriptions import now_ms
from schemas.api import KeyCreate, KeyCreated, KeyList, KeyOut, OrgCreate, OrgOut
from tally.domain.keys import normalise_scopes
from tally.store import audit

log = logging.getLogger("tally.admin")

router = APIRouter(
    prefix="/api/v2/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=errors("unauthorized", "forbidden"),
)


@router.post(
    "/orgs",
    status_code=201,
    response_model=OrgOut,
    responses=errors("conflict", "unknown_plan", "invalid_request"),
)
async def create_org(
    body: OrgCreate, svc: Services = Depends(services), actor: str = Depends(require_admin)
) -> OrgOut:
    """Create an org on a plan; its free-plan windows start on `signup_date`'s day."""
    if svc.plans.get(body.plan) is None:
        names = ", ".join(p.name for p in svc.plans.plans)
        raise ApiError(
            400, "unknown_plan", f"plan {body.plan!r} does not exist; use one of {names}"
        )
    try:
        org = await svc.registry.create_org(body.org_id, body.plan, body.signup_date)
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    log.info("org created on plan %s", org.plan, extra={"org": org.org_id})
    await audit.record(
        svc.store, actor=actor, action="org.created", org_id=org.org_id, after=state(org)
    )
    return OrgOut(
        org_id=org.org_id, plan=org.plan, signup_date=org.signup_date, created_at=org.created_at
    )


def _known(svc: Services, org_id: str) -> None:
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")


def _key_out(k: ApiKey) -> KeyOut:
    return KeyOut(
        key_id=k.key_id,
        org_id=k.org_id,
        mode="test" if k.mode == "test" else "live",
        scopes=list(k.scopes),
        created_at=k.created_at,
        revoked=k.revoked,
    )


@router.post(
    "/orgs/{org_id}/keys",
    status_code=201,
    response_model=KeyCreated,
    responses=errors("not_found", "plan_limit_error", "forbidden"),
)
async def create_key(
    org_id: str,
    body: KeyCreate,
    svc: Services = Depends(services),
    actor: str = Depends(require_admin),
) -> KeyCreated:
    """Issue an API key for an org. The key is in this response only; a hash is stored.

    `scopes` says what the key may do (every scope when left out); an agent runtime needs
    `events:write` and `quota:read` only. The plan's `api_keys` caps the active keys of each
    mode (live and test).
    """
    scopes = normalise_scopes(body.scopes)
    _known(svc, org_id)
    async with svc.registry.accounts.lock:
        plan = account(svc.registry, svc.plans, org_id, now_ms()).plan
        active = svc.registry.active_keys(org_id, body.mode)
        if plan.api_keys is not None and active >= plan.api_keys:
            raise ApiError(
                403,
                "plan_limit_error",
                f"the {plan.display_name} plan allows {plan.api_keys} active {body.mode} "
                f"key(s) and org {org_id!r} has {active}: revoke one "
                f"(DELETE /api/v2/admin/orgs/{org_id}/keys/<key_id>) or upgrade",
            )
        key, record = await svc.registry.create_key(org_id, body.mode, scopes)
        log.info("%s key %s issued", body.mode, record.key_id, extra={"org": org_id})
    await audit.record(
        svc.store,
        actor=actor,
        action="key.issued",
        org_id=org_id,
        after=_key_out(record).model_dump(mode="json"),
    )
    return KeyCreated(
        key=key, key_id=record.key_id, org_id=org_id, mode=body.mode, scopes=_key_out(record).scopes
    )


@router.get("/orgs/{org_id}/keys", response_model=KeyList, responses=errors("not_found"))
async def list_keys(org_id: str, svc: Services = Depends(services)) -> KeyList:
    """The org's keys, revoked ones included; never the keys themselves."""
    _known(svc, org_id)
    return KeyList(keys=[_key_out(k) for k in svc.registry.keys_of(org_id)])


@router.delete("/orgs/{org_id}/keys/{key_id}", response_model=KeyOut, responses=errors("not_found"))
async def revoke_key(
    org_id: str, key_id: str, svc: Services = Depends(services), actor: str = Depends(require_admin)
) -> KeyOut:
    """Revoke one of the org's keys; it stops authenticating at once. Idempotent."""
    _known(svc, org_id)
    record = svc.registry.keys.get(key_id)
    if record is None or record.org_id != org_id:
        raise ApiError(404, "not_found", f"org {org_id!r} has no key {key_id!r}")
    if not record.revoked:
        before = _key_out(record).model_dump(mode="json")
        record = await svc.registry.revoke_key(key_id)
        after = _key_out(record).model_dump(mode="json")
        await audit.record(
            svc.store, actor=actor, action="key.revoked", org_id=org_id, before=before, after=after
        )
    return _key_out(record)
