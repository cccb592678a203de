"""Sessions are leases: the rules, as pure functions.

A live `session.started` opens a lease; every live event carrying its `session_id` (a
`session.heartbeat` for an idle session) renews it; it lapses `lease_s` seconds after the
latest of their event times (`last_seen`). A lapse is written down as a `session.ended` with
reason `expired` and the `last_seen_at` it judged: read in log order, it ends the session
only if nothing later renewed it, so every worker that reads the log (or rebuilds from the
store) reaches the same verdict, whatever its clock said when the end was written.

Times are kept to the millisecond, as the store keeps event times: a lease rebuilt from the
store is the one the stream had.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

DEFAULT_LEASE_S = 900
EXPIRED, ENDED_BY_API = "expired", "ended_by_api"

SessionKey = tuple[str, str]  # (org_id, session_id)


class Lease(NamedTuple):
    """An open session's lease: its latest activity, and where it started."""

    last_seen: datetime
    agent_id: str
    run_id: str


def to_ms(ts: datetime) -> datetime:
    """`ts` truncated to the millisecond (the store's precision for event times)."""
    return ts.replace(microsecond=ts.microsecond - ts.microsecond % 1000)


def expires_at(last_seen: datetime, lease_s: float) -> datetime:
    return last_seen + timedelta(seconds=lease_s)


def voids(lease: Lease | None, last_seen_at: datetime) -> bool:
    """Whether an `expired` end judged at `last_seen_at` is void: the session was renewed
    after the activity the lapse was counted from."""
    return lease is not None and lease.last_seen > last_seen_at


def lapsed(
    leases: Iterable[tuple[SessionKey, Lease]], now: datetime, lease_s: float
) -> list[tuple[SessionKey, Lease]]:
    """The leases that have lapsed at `now`, soonest lapsed first."""
    cutoff = now - timedelta(seconds=lease_s)
    out = [(sk, lease) for sk, lease in leases if lease.last_seen <= cutoff]
    out.sort(key=lambda item: item[1].last_seen)
    return out


def _id(prefix: str, *parts: str) -> str:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()
    return f"{prefix}-{digest}"


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expiry_event(sk: SessionKey, lease: Lease, lease_s: float, oldest: datetime) -> dict[str, Any]:
    """The `session.ended` that records a lapse, on the wire. Its `event_id` names the
    lease it ends, so writing it again (after a crash, by another worker) stores it once;
    its `ts` is the lapse, or `oldest` if that is older than the event-time policy takes."""
    org, session = sk
    last_seen = rfc3339(lease.last_seen)
    return {
        "event_id": _id("tally-expired", org, session, last_seen),
        "type": "session.ended",
        "reason": EXPIRED,
        "org_id": org,
        "agent_id": lease.agent_id,
        "run_id": lease.run_id or None,
        "session_id": session,
        "key_mode": "live",
        "ts": rfc3339(max(expires_at(lease.last_seen, lease_s), oldest)),
        "last_seen_at": last_seen,
    }


def api_end_event(
    org: str, session: str, agent_id: str, run_id: str, started_at: datetime, now: datetime
) -> dict[str, Any]:
    """The `session.ended` that `DELETE /api/v2/sessions/{id}` writes: one per session
    start, so a DELETE sent again is stored once."""
    return {
        "event_id": _id("tally-ended-by-api", org, session, rfc3339(started_at)),
        "type": "session.ended",
        "reason": ENDED_BY_API,
        "org_id": org,
        "agent_id": agent_id,
        "run_id": run_id or None,
        "session_id": session,
        "key_mode": "live",
        "ts": rfc3339(now),
    }


def open_leases(
    sessions: Mapping[SessionKey, int], leases: Mapping[SessionKey, Lease], started: int
) -> Iterable[tuple[SessionKey, Lease]]:
    """The leases of the sessions whose flags say open (`started` alone)."""
    for sk, lease in leases.items():
        if sessions.get(sk) == started:
            yield sk, lease
