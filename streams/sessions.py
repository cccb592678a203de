"""Leases that lapse: the worker writes their ends (the rules: tally.domain.leases).

Twice a second the worker looks at the leases of the open sessions it holds; for each one
its wall clock says has lapsed, it writes a `session.ended` with reason `expired` to the
session's partition of `usage.events`, naming the lease it ends (`last_seen_at`). The end
then goes the way of every event: read in log order, counted if nothing renewed the session
before it (else void), stored once (its `event_id` names the lease, so one written again
after a crash or by the next owner of the partition is a duplicate). The clock only decides
*when* an end is written; whether it ends the session is decided by the log, so a worker
rebuilt from the store reaches the verdict the first one did.

A partition far behind its log is not looked at: its leases are old news, and what it has
not read yet may renew them (an end written meanwhile would be void, harmlessly).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streams.batch import PartitionState
from streams.leases import STARTED
from tally import metrics
from tally.config import EVENTS_TOPIC
from tally.domain.eventtime import EventTime
from tally.domain.leases import SessionKey, expiry_event, lapsed, open_leases

log = logging.getLogger("tally.sessions")

CHECK_EVERY_S = 0.5
# An end written and not yet read back is written again after this long (stored once).
REWRITE_S = 5.0
# A partition with more than this many records not yet read is not looked at.
MAX_LAG = 1_000
# An end older than the event-time policy takes is dated this far inside it instead.
POLICY_MARGIN = timedelta(hours=1)


class LeaseKeeper:
    """Writes the ends of lapsed leases; `write()` is called from the worker's loop."""

    def __init__(self, lease_s: float, event_time: EventTime) -> None:
        self.lease_s = lease_s
        self.event_time = event_time
        self.written = 0
        self._checked = 0.0
        # Ends written and not yet seen to take effect: the lease judged, when written.
        self._pending: dict[SessionKey, tuple[datetime, float]] = {}

    def due(
        self, states: Mapping[int, PartitionState], now: datetime, clock: float
    ) -> list[tuple[int, SessionKey, dict[str, Any]]]:
        """The ends to write now: `(partition, session, event)` for each lapsed lease not
        written in the last REWRITE_S."""
        oldest = self.event_time.bounds(now)[0] + POLICY_MARGIN
        out, lapsing = [], set()
        for partition, state in states.items():
            for sk, lease in lapsed(
                open_leases(state.sessions, state.leases, STARTED), now, self.lease_s
            ):
                lapsing.add(sk)
                pending = self._pending.get(sk)
                if pending and pending[0] == lease.last_seen and clock - pending[1] < REWRITE_S:
                    continue
                self._pending[sk] = (lease.last_seen, clock)
                out.append((partition, sk, expiry_event(sk, lease, self.lease_s, oldest)))
        for sk in [sk for sk in self._pending if sk not in lapsing]:
            del self._pending[sk]  # ended, renewed, or its partition went elsewhere
        return out

    async def write(
        self,
        producer: Any,
        states: Mapping[int, PartitionState],
        lag: Callable[[int], int | None],
    ) -> None:
        """Write the ends due (at most every CHECK_EVERY_S), for partitions near their log's
        end, and wait for the broker to take them."""
        clock = time.monotonic()
        if clock - self._checked < CHECK_EVERY_S:
            return
        self._checked = clock
        near = {p: st for p, st in states.items() if (lag(p) or 0) <= MAX_LAG}
        due = self.due(near, datetime.now(UTC), clock)
        if not due:
            return
        futures = []
        for partition, (org, session), event in due:
            futures.append(
                await producer.send(
                    EVENTS_TOPIC, orjson.dumps(event), key=org.encode(), partition=partition
                )
            )
            log.info(
                "session %s of org %s: its lease lapsed at %s (last seen %s); writing its end",
                session,
                org,
                event["ts"],
                event["last_seen_at"],
                extra={"partition": partition},
            )
        await asyncio.gather(*futures)
        self.written += len(due)
        metrics.session_expiries_written.inc(len(due))
