"""Admin: closing an account (and undoing it within the grace period), the purge, and the
audit trail. Needs the admin key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query

from api import closure
from api.auth import require_admin, services
from api.errors import ApiError
from api.openapi import errors
from api.registry import Org
from api.state import Services
from schemas.access import Action, AuditEntry, AuditTrail, OrgClosure, PurgeRun
from schemas.api import ErrorBody
from tally.store import audit

log = logging.getLogger("tally.admin")

router = APIRouter(
    prefix="/api/v2/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=errors("unauthorized", "forbidden"),
)
MAX_ENTRIES = 1000


def _org(svc: Services, org_id: str) -> Org:
    org = svc.registry.orgs.get(org_id)
    if org is None:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    return org


def _out(svc: Services, org: Org) -> OrgClosure:
    return OrgClosure(
        org_id=org.org_id, closed_at=org.closed_at, purge_after=closure.purge_after(svc, org)
    )


@router.delete("/orgs/{org_id}", response_model=OrgClosure, responses=errors("not_found"))
async def close_org(
    org_id: str, svc: Services = Depends(services), actor: str = Depends(require_admin)
) -> OrgClosure:
    """Close an org: its keys stop working at once and its events are refused. Its data is
    kept for the grace period (`purge_after`), during which `POST .../restore` undoes this;
    then it is purged. Closing a closed org changes nothing."""
    org = _org(svc, org_id)
    if org.closed_at is None:
        before = closure.state(org)
        org = await svc.registry.set_closed(org_id, datetime.now(UTC))
        await audit.record(
            svc.store,
            actor=actor,
            action="org.closed",
            org_id=org_id,
            before=before,
            after=closure.state(org),
        )
        log.info("org closed", extra={"org": org_id})
    return _out(svc, org)


@router.post(
    "/orgs/{org_id}/restore", response_model=OrgClosure, responses=errors("not_found", "conflict")
)
async def restore_org(
    org_id: str, svc: Services = Depends(services), actor: str = Depends(require_admin)
) -> OrgClosure:
    """Undo a closure within the grace period: the org's keys work again, and its events are
    counted again (those refused meanwhile are in the dead-letter topic: `tally dlq`)."""
    org = _org(svc, org_id)
    if org.closed_at is None:
        raise ApiError(409, "conflict", f"org {org_id!r} is not closed: nothing to restore")
    before = closure.state(org)
    org = await svc.registry.set_closed(org_id, None)
    await audit.record(
        svc.store,
        actor=actor,
        action="org.restored",
        org_id=org_id,
        before=before,
        after=closure.state(org),
    )
    log.info("org restored", extra={"org": org_id})
    return _out(svc, org)


@router.post("/closures/purge", response_model=PurgeRun)
async def purge_closed(
    svc: Services = Depends(services), actor: str = Depends(require_admin)
) -> PurgeRun:
    """Purge now every closed org whose grace period has ended (the retention sweep does the
    same every `TALLY_RETENTION_INTERVAL_S`): `tally orgs purge`."""
    return PurgeRun(purged=await closure.purge_due(svc, actor))


@router.get(
    "/audit",
    response_model=AuditTrail,
    responses={400: {"model": ErrorBody, "description": "A time without a time zone"}},
)
async def audit_trail(
    org_id: str | None = Query(None, min_length=1, max_length=128),
    action: Action | None = Query(None),
    from_: datetime | None = Query(None, alias="from", description="From this time (UTC)."),
    to: datetime | None = Query(None, description="Up to this time, not included (UTC)."),
    svc: Services = Depends(services),
) -> AuditTrail:
    """Admin actions, oldest first: who did what to which org, with the state before and
    after. Every filter is optional."""
    start, end = _aware(from_, "from"), _aware(to, "to")
    rows = await svc.store.query(*audit.trail_query(org_id, action, start, end, MAX_ENTRIES + 1))
    entries = [_entry(row) for row in rows[:MAX_ENTRIES]]
    return AuditTrail(entries=entries, has_more=len(rows) > MAX_ENTRIES)


def _aware(t: datetime | None, name: str) -> datetime | None:
    if t is not None and t.tzinfo is None:
        raise ApiError(400, "invalid_parameter", f"{name}: give a time zone, e.g. Z for UTC")
    return t.astimezone(UTC) if t is not None else None


def _entry(row: tuple[object, ...]) -> AuditEntry:
    at, actor, action, org_id, before, after = row
    assert isinstance(at, datetime)
    return AuditEntry.model_validate(
        {
            "at": at if at.tzinfo else at.replace(tzinfo=UTC),
            "actor": actor,
            "action": action,
            "org_id": org_id,
            "before": audit.loads(str(before)),
            "after": audit.loads(str(after)),
        }
    )
