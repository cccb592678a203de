"""Session reservations: concurrent checks in one process never admit more than the limit.

The session counter only moves once a `session.started` event has gone through the worker,
so a check that admits a session holds a reservation in memory until the counter shows it.
The rule, per org:

- An admitted session check reserves `amount` slots, each expiring after a short TTL.
- The check counts `active` (from the counters) plus the reservations still held.
- When the counter has risen since it was last seen, that many reservations (the oldest
  first) are taken to have started and are released; a reservation whose session never
  shows up is released when its TTL ends.

This errs on the side of refusing: if a session ends and a reserved one starts between two
looks, the counter does not rise and the reservation is held until its TTL. Sessions started
without a check (or through another API process) can release a reservation early; the
limit then holds for the checks this process answers, as promised, not for traffic that
bypasses them. Pure: times are plain seconds from any monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Held:
    """The reservations of one org: their expiry times, oldest first, and the last count seen."""

    expiries: tuple[float, ...] = ()
    seen_active: int = 0

    @property
    def count(self) -> int:
        return len(self.expiries)


def settle(held: Held | None, active: int, now: float) -> Held:
    """Release reservations that expired or that the counter now shows as started."""
    if held is None:
        return Held((), active)
    live = tuple(e for e in held.expiries if e > now)
    started = max(active - held.seen_active, 0)
    return Held(live[started:], active)


def reserve(held: Held, amount: int, now: float, ttl_s: float) -> Held:
    """Hold `amount` more slots until `now + ttl_s`."""
    if amount < 1:
        raise ValueError("amount must be at least 1")
    return Held(held.expiries + (now + ttl_s,) * amount, held.seen_active)
