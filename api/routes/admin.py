"""Admin: orgs and their API keys. Needs the admin key."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends

from api.auth import require_admin, services
from api.errors import ApiError
from api.registry import Conflict
from api.state import Services
from schemas.api import ErrorBody, KeyCreate, KeyCreated, OrgCreate, OrgOut

log = logging.getLogger("tally.admin")

router = APIRouter(
    prefix="/api/v2/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.post(
    "/orgs",
    status_code=201,
    response_model=OrgOut,
    responses={409: {"model": ErrorBody}, 400: {"model": ErrorBody}},
)
async def create_org(body: OrgCreate, svc: Services = Depends(services)) -> OrgOut:
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
    return OrgOut(
        org_id=org.org_id, plan=org.plan, signup_date=org.signup_date, created_at=org.created_at
    )


@router.post(
    "/orgs/{org_id}/keys",
    status_code=201,
    response_model=KeyCreated,
    responses={404: {"model": ErrorBody}},
)
async def create_key(org_id: str, body: KeyCreate, svc: Services = Depends(services)) -> KeyCreated:
    """Issue an API key for an org. The key is in this response only."""
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    key, record = await svc.registry.create_key(org_id, body.mode)
    log.info("%s key %s issued", body.mode, record.key_id, extra={"org": org_id})
    return KeyCreated(key=key, key_id=record.key_id, org_id=org_id, mode=body.mode)
