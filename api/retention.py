"""Deletes raw events past each org's plan log retention, in the API process (which knows
every org's plan in force). Rollups are kept: quotas, breakdowns and bills do not change.

The same sweep purges closed orgs whose grace period has ended (`api.closure`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from api import closure
from api.accounts import account
from api.background import Background
from api.state import Services
from tally.domain.retention import cutoffs
from tally.store import audit

log = logging.getLogger("tally.retention")

DELETE = (
    "DELETE FROM events WHERE org_id IN {orgs:Array(String)} AND ts < {cutoff:DateTime64(3, 'UTC')}"
)


class RetentionSweeper(Background):
    name = "tally-retention"

    def __init__(self, services: Services, interval_s: float) -> None:
        self.services = services
        self.interval_s = interval_s
        super().__init__()

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete what has expired; returns how many orgs had a retention to apply."""
        svc = self.services
        now = now or datetime.now(UTC)
        retention = {
            org_id: account(svc.registry, svc.plans, org_id, now).plan.log_retention_days
            for org_id in list(svc.registry.orgs)
        }
        groups = cutoffs(retention, now)
        for cutoff, orgs in groups.items():
            await svc.store.command(DELETE, {"orgs": orgs, "cutoff": cutoff})
        purged = await closure.purge_due(svc, audit.RETENTION_ACTOR, now)
        if purged:
            log.info("closed orgs purged: %s", ", ".join(purged))
        return sum(len(orgs) for orgs in groups.values())

    async def _run(self) -> None:
        while True:
            try:
                swept = await self.sweep()
                log.info("retention applied to %d orgs", swept)
            except Exception as exc:  # the store may be down: try again next time
                log.warning("retention sweep failed: %s", exc)
            await asyncio.sleep(self.interval_s)
