"""Live sessions: list an org's, end one at once (org key; the admin key for any org).

The list is read from the store (the stored events are what the worker's leases are
rebuilt from; tally.domain.leases). An end is a `session.ended` with reason
`ended_by_api`, sent through the API's emitter; the answer waits until the worker has stored
it, so the slot is free in the quota by the time the caller reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends

from api.auth import require_admin, require_scope, services
from api.errors import ApiError
from api.openapi import errors
from api.registry import ApiKey
from api.state import Services
from producers.spool import SpoolError
from schemas.events import validate_event
from schemas.sessions import EndedSession, LiveSession, LiveSessions
from tally.domain.leases import api_end_event, expires_at
from tally.store import queries as q

router = APIRouter(prefix="/api/v2", tags=["sessions"], responses=errors("unauthorized"))
admin = APIRouter(
    prefix="/api/v2/admin",
    tags=["sessions"],
    dependencies=[Depends(require_admin)],
    responses=errors("unauthorized", "forbidden"),
)
# Ending a session: it may not be live (404), the key may not be allowed to (403), and the
# end may not be confirmed as stored in time (503, with Retry-After).
_END = errors("not_found", "forbidden", "quota_unavailable")


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


async def live(svc: Services, org_id: str) -> LiveSessions:
    lease_s = svc.settings.session_lease_s
    rows = await svc.store.query(*q.live_sessions(org_id))
    return LiveSessions(
        lease_s=lease_s,
        sessions=[
            LiveSession(
                session_id=sid,
                agent_id=agent,
                run_id=run or None,
                started_at=_utc(started),
                last_seen_at=_utc(seen),
                expires_at=expires_at(_utc(seen), lease_s),
            )
            for sid, agent, run, started, seen in rows
        ],
    )


async def end(svc: Services, org_id: str, session_id: str) -> EndedSession:
    if svc.emitter is None:
        raise ApiError(503, "unavailable", "ending sessions is not enabled in this process")
    found = next(
        (s for s in (await live(svc, org_id)).sessions if s.session_id == session_id), None
    )
    if found is None:
        raise ApiError(404, "not_found", f"no live session {session_id!r} in this org")
    now = datetime.now(UTC)
    event = validate_event(
        api_end_event(org_id, session_id, found.agent_id, found.run_id or "", found.started_at, now)
    )
    wait_s = svc.settings.ingest_wait_s
    try:
        stored = await svc.emitter.emit_stored([event], timeout=wait_s)
    except SpoolError as exc:
        raise ApiError(503, "unavailable", f"the end could not be sent: {exc}") from None
    if not stored:
        raise ApiError(
            503,
            "not_stored_yet",
            f"the end was not confirmed as stored within {wait_s:g}s; send the DELETE again"
            " (the end is stored once)",
            headers={"Retry-After": "1"},
        )
    return EndedSession(session_id=session_id, ended_at=event.ts)


@router.get("/sessions", response_model=LiveSessions)
async def list_sessions(
    key: ApiKey = Depends(require_scope("quota:read")), svc: Services = Depends(services)
) -> LiveSessions:
    """The org's live sessions, oldest first, each with when its lease lapses."""
    return await live(svc, key.org_id)


@router.delete("/sessions/{session_id}", response_model=EndedSession, responses=_END)
async def end_session(
    session_id: str,
    key: ApiKey = Depends(require_scope("sessions:write")),
    svc: Services = Depends(services),
) -> EndedSession:
    """End a live session at once (recorded as an end with reason `ended_by_api`)."""
    if key.mode != "live":
        raise ApiError(403, "forbidden", "sessions are live: end them with a live key")
    return await end(svc, key.org_id, session_id)


@admin.get("/orgs/{org_id}/sessions", response_model=LiveSessions)
async def admin_list_sessions(org_id: str, svc: Services = Depends(services)) -> LiveSessions:
    """An org's live sessions (for `tally sessions list`)."""
    return await live(svc, org_id)


@admin.delete("/orgs/{org_id}/sessions/{session_id}", response_model=EndedSession, responses=_END)
async def admin_end_session(
    org_id: str, session_id: str, svc: Services = Depends(services)
) -> EndedSession:
    """End an org's live session at once (for `tally sessions end`)."""
    return await end(svc, org_id, session_id)
