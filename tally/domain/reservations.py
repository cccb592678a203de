"""Reservations: the cap of a meter, decided in log order by the worker that owns the org.

An admission check that must be strict (a `sessions` check, or any check with `reserve`)
goes on the org's partition of `usage.events` as an `admission.requested` event. The worker
that owns the partition reads it in log order, after every event before it, and decides here
against its exact counters plus the reservations the org holds:

- `used + held + amount <= limit` admits, and holds `amount` until `expires_at`;
- the usage event that carries the `reservation_id` settles it (a live `session.started`
  that carries none settles the org's oldest session reservation);
- a reservation lapses once an admission request of the org is read whose time is at or
  after its `expires_at` (the org's clock only moves with its requests, in log order).

Every input is in the log (the limit, the window and the time come with the request), so a
worker rebuilt from the store after a crash or a rebalance reaches the same decisions. Pure:
plain values in, plain values out; scopes below the org add their own `used` and `limit`
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

HELD, REFUSED, SETTLED = "held", "refused", "settled"


@dataclass(frozen=True, slots=True)
class Hold:
    """What one admitted reservation holds, and until when."""

    meter: str
    amount: int
    expires_at: datetime


Holds = Mapping[str, Hold]  # reservation_id -> Hold, of one org


def lapse(holds: Holds, clock: datetime) -> dict[str, Hold]:
    """The holds still in force at `clock` (the org's latest request time)."""
    return {rid: h for rid, h in holds.items() if h.expires_at > clock}


def held(holds: Holds, meter: str) -> int:
    """The amount held against `meter`."""
    return sum(h.amount for h in holds.values() if h.meter == meter)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    used: int  # used plus held, before this request
    holds: dict[str, Hold]  # the org's holds after the decision


def admit(
    holds: Holds,
    reservation_id: str,
    meter: str,
    amount: int,
    limit: int,
    used: int,
    clock: datetime,
    expires_at: datetime,
) -> Verdict:
    """Decide one request at the org's `clock`: lapse what has lapsed, then admit and hold
    `amount` if `used + held + amount <= limit`. A request whose reservation is held already
    (a copy read again) is admitted again without a second hold."""
    live = lapse(holds, clock)
    if reservation_id in live:
        mine = live[reservation_id]
        return Verdict(True, used + held(live, meter) - mine.amount, live)
    figure = used + held(live, meter)
    if figure + amount > limit:
        return Verdict(False, figure, live)
    live[reservation_id] = Hold(meter, amount, expires_at)
    return Verdict(True, figure, live)


def settles(holds: Holds, reservation_id: str, session_start: bool) -> str | None:
    """The reservation an event settles: the one it names, if held; for a session start
    that names none, the oldest session reservation held."""
    if reservation_id:
        return reservation_id if reservation_id in holds else None
    if not session_start:
        return None
    sessions = [(h.expires_at, rid) for rid, h in holds.items() if h.meter == "sessions"]
    return min(sessions)[1] if sessions else None
