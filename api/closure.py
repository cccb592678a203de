"""Closing an account: closure, restore within the grace period, then the purge.

A closed org's keys stop at once (`Registry.authenticate`) and its events are refused. Its
data is kept for `TALLY_CLOSURE_GRACE_DAYS` (30), during which a restore undoes the closure;
after that the retention sweep (`api.retention`) purges it from every table of the store
(`tally.store.purge`) and writes a tombstone on `usage.counters` for each of its counters.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from api.registry import Org
from api.state import Services
from tally.config import COUNTERS_TOPIC
from tally.domain.counters import encode_key
from tally.kafka_clients import stop_client
from tally.store import audit
from tally.store import purge as sql

log = logging.getLogger("tally.closure")


def purge_after(svc: Services, org: Org) -> datetime | None:
    if org.closed_at is None:
        return None
    return org.closed_at + timedelta(days=svc.settings.closure_grace_days)


def state(org: Org) -> dict[str, Any]:
    """An org as the audit trail records it."""
    closed = org.closed_at.isoformat() if org.closed_at else None
    return {"plan": org.plan, "signup_date": org.signup_date.isoformat(), "closed_at": closed}


def due(svc: Services, now: datetime) -> list[str]:
    """Closed orgs whose grace period has ended at `now`."""
    out = []
    for org in list(svc.registry.orgs.values()):
        after = purge_after(svc, org)
        if after is not None and after <= now:
            out.append(org.org_id)
    return sorted(out)


async def purge_due(svc: Services, actor: str, now: datetime | None = None) -> list[str]:
    """Purge every org whose grace period has ended; returns their ids."""
    orgs = due(svc, now or datetime.now(UTC))
    for org_id in orgs:
        await purge(svc, org_id, actor)
    return orgs


async def purge(svc: Services, org_id: str, actor: str) -> None:
    """Delete the org's rows from every table, tombstone its counters, forget it, and
    record `org.purged`. Safe to run again after a failure part way."""
    org = svc.registry.orgs[org_id]
    before = state(org)
    tables = [row[0] for row in await svc.store.query(*sql.tables_query())]
    for table in tables:
        await svc.store.command(*sql.delete(table, org_id))
    await tombstone(svc, org_id)
    svc.registry.forget(org_id)
    after = {"tables": tables}
    await audit.record(
        svc.store, actor=actor, action="org.purged", org_id=org_id, before=before, after=after
    )
    log.info("org purged from %d tables", len(tables), extra={"org": org_id})


async def tombstone(svc: Services, org_id: str) -> int:
    """A tombstone (a null value) on `usage.counters` for each of the org's counters, so that
    compaction drops them and no replica of the table keeps them."""
    keys = svc.counters.keys_of(org_id)
    if keys:
        producer = AIOKafkaProducer(bootstrap_servers=svc.counters.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for key in keys:
                await producer.send(COUNTERS_TOPIC, None, key=encode_key(key))
            await producer.flush()
        finally:
            await stop_client(producer, 10.0)
    for key in keys:
        svc.counters.forget(key)
    return len(keys)
