"""Strict admission: the org's partition of `usage.events` is the sequencer.

The API writes an `admission.requested` keyed by the org; the worker that owns the org
decides it in log order (tally.domain.reservations) and stores the decision with its batch.
The API waits until the request is stored (the emitter's end-to-end acknowledgement) and
reads the decision back: any number of replicas share no lock, and a decision is only ever
answered once it is stored, so a worker that crashes and is rebuilt holds what it admitted.
No decision in time is an error (503 with Retry-After), never an admission.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.errors import ApiError
from api.state import Services
from producers.spool import SpoolError
from schemas.events import validate_event
from tally.domain.leases import to_ms
from tally.domain.windows import Window
from tally.store import queries as q


@dataclass(frozen=True, slots=True)
class Decided:
    allowed: bool
    used: int  # used plus held, before this request
    reservation_id: str
    expires_at: datetime


def _unavailable(why: str) -> ApiError:
    return ApiError(
        503,
        "quota_unavailable",
        f"the admission decision {why}: nothing was admitted; retry (Retry-After)",
        headers={"Retry-After": "1"},
    )


async def decide(
    svc: Services,
    org_id: str,
    meter: str,
    amount: int,
    limit: int,
    window: Window,
    ttl_s: float,
    now: datetime,
) -> Decided:
    """Ask the worker that owns `org_id` to decide, and wait (bounded) for its decision."""
    if svc.emitter is None:
        raise _unavailable("cannot be asked for: this process has no emitter")
    rid = f"rsv_{uuid.uuid4().hex}"
    # To the millisecond, as the store keeps them: a rebuilt worker judges the same times.
    now = to_ms(now)
    expires = to_ms(now + timedelta(seconds=ttl_s))
    event = validate_event(
        {
            "event_id": f"admission-{rid}",
            "type": "admission.requested",
            "org_id": org_id,
            "agent_id": "tally-api",
            "key_mode": "live",
            "ts": now,
            "reservation_id": rid,
            "meter": meter,
            "amount": amount,
            "limit": limit,
            "window_start": None if meter == "sessions" else window.start,
            "window_end": None if meter == "sessions" else window.end,
            "expires_at": expires,
        }
    )
    wait_s = svc.settings.admission_wait_s
    try:
        stored = await svc.emitter.emit_stored([event], timeout=wait_s)
    except SpoolError as exc:
        raise _unavailable(f"could not be asked for ({exc})") from None
    if not stored:
        raise _unavailable(f"did not come within {wait_s:g}s")
    try:
        rows = await svc.store.query(*q.admission_decision(org_id, rid))
    except Exception as exc:  # the store went away between the mark and the read
        raise _unavailable(f"could not be read ({exc})") from None
    if not rows:
        raise _unavailable("was not found where the worker stores it")
    state, used, expires_at = rows[0]
    at = expires_at.replace(tzinfo=UTC) if expires_at.tzinfo is None else expires_at
    return Decided(state == "held", int(used), rid, at)
