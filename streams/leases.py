"""A batch's sessions and their leases, event by event (part of the definition,
`streams.batch`; the rules are tally.domain.leases).

A session's flags say whether it started (STARTED), ended (ENDED) or both; its lease is
kept while it is open. The state of a batch not yet applied is read newest first: the batch
itself, the batches prepared before it, then the partition state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from tally.domain.leases import EXPIRED, Lease, to_ms, voids

STARTED, ENDED = 1, 2

SessionKey = tuple[str, str]


class Sessions(Protocol):
    """What holds sessions: a batch's result or the partition state."""

    sessions: dict[SessionKey, int]
    leases: dict[SessionKey, Lease]


class Ends(Sessions, Protocol):
    ends: dict[str, int]


def _latest(
    result: Sessions,
    pending: Sequence[Sessions],
    state: Sessions,
    sk: SessionKey,
    name: str,
) -> Any:
    """The newest known value of a session's flags or lease (`name`), newest batch first."""
    for known in (result, *reversed(pending)):
        value = getattr(known, name).get(sk)
        if value is not None:
            return value
    return getattr(state, name).get(sk)


def session(
    result: Ends,
    state: Sessions,
    pending: Sequence[Sessions],
    event: dict[str, Any],
) -> bool:
    """Fold a live event carrying a session_id into its session's flags and lease; False
    for an `expired` end that is void (the session is not open, or was renewed after the
    activity the lapse counted from)."""
    sk, kind, ts = (event["org_id"], event["session_id"]), event["type"], event["ts"]
    if kind == "session.ended":
        flags = _latest(result, pending, state, sk, "sessions") or 0
        reason = event["reason"]
        lease = _latest(result, pending, state, sk, "leases")
        if reason == EXPIRED and (flags != STARTED or voids(lease, event["last_seen_at"])):
            return False
        result.sessions[sk] = flags | ENDED
        result.ends[reason] = result.ends.get(reason, 0) + 1
    elif kind == "session.started":
        flags = _latest(result, pending, state, sk, "sessions") or 0
        result.sessions[sk] = flags | STARTED
        lease = _latest(result, pending, state, sk, "leases")
        if lease is None:
            result.leases[sk] = Lease(to_ms(ts), event["agent_id"], event["run_id"])
        elif ts > lease.last_seen:
            result.leases[sk] = lease._replace(last_seen=to_ms(ts))
    else:
        renew(result, state, pending, sk, ts, event["agent_id"], event["run_id"])
    return True


def renew(
    result: Sessions,
    state: Sessions,
    pending: Sequence[Sessions],
    sk: SessionKey,
    ts: datetime,
    agent_id: str,
    run_id: str,
) -> None:
    """An event of an open session renews its lease to its event time, if that is later."""
    if _latest(result, pending, state, sk, "sessions") != STARTED:
        return
    lease = _latest(result, pending, state, sk, "leases")
    if lease is None:
        result.leases[sk] = Lease(to_ms(ts), agent_id, run_id)
    elif ts > lease.last_seen:
        result.leases[sk] = lease._replace(last_seen=to_ms(ts))
