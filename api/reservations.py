"""Session slots admitted by this API process and not yet visible in the counters.

The rule is `tally.domain.reservations`; this holds its state per org. Every method is
synchronous, so a check reads, decides and reserves without yielding to the event loop:
concurrent checks in one process are serialised and never admit more than the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tally.domain.reservations import Held, reserve, settle


class SessionReservations:
    def __init__(self, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._held: dict[str, Held] = {}

    def held(self, org_id: str, active: int) -> int:
        """Reservations still held for `org_id`, given the sessions the counters show active."""
        h = settle(self._held.get(org_id), active, self.clock())
        if h.count:
            self._held[org_id] = h
        else:
            self._held.pop(org_id, None)
        return h.count

    def reserve(self, org_id: str, amount: int, active: int) -> None:
        h = settle(self._held.get(org_id), active, self.clock())
        self._held[org_id] = reserve(h, amount, self.clock(), self.ttl_s)
