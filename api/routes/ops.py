"""Operations: Prometheus metrics, and the store and counter side of reconciliation."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Depends, Response

from api.accounts import account
from api.auth import require_admin, services
from api.state import Services
from schemas.api import ErrorBody
from schemas.ops import (
    EpochProbe,
    EpochProbes,
    FigureRow,
    OffsetRange,
    RangesRequest,
    ReconcileFigures,
    ReconcileRequest,
    StoredEvents,
    StoredLookup,
)
from tally import metrics
from tally.domain import counters
from tally.domain import reconcile as rec
from tally.domain.retention import cutoffs
from tally.store import ops as sql

log = logging.getLogger("tally.ops")

router = APIRouter(tags=["operations"])
admin = APIRouter(
    prefix="/api/v2/admin",
    tags=["operations"],
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("/metrics", response_class=Response)
async def prometheus(svc: Services = Depends(services)) -> Response:
    """Prometheus text exposition: this process's metrics (worker too under `tally up`)."""
    metrics.counter_table(svc.counters)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)


@admin.post("/reconcile", response_model=ReconcileFigures)
async def reconcile(body: ReconcileRequest, svc: Services = Depends(services)) -> ReconcileFigures:
    """The store's and the counters' figures per org and day, to compare with a broker scan
    (`tally reconcile` does the scan and the comparison)."""
    seen = None
    if body.ranges is not None:
        lows, highs = _bounds(body.ranges)
        epochs = [body.epochs.get(p, []) for p in range(len(lows))]
        seen = await _stored(svc, body, epochs, lows, highs)
    stored = await _stored(svc, body)
    rollups = await _rollups(svc, body)
    now = datetime.now(UTC)
    since = now.date() - timedelta(days=counters.KEEP_DAYS)
    log.info(
        "reconcile figures for %s .. %s",
        body.start,
        body.end,
        extra={"org": body.org_id},
    )
    return ReconcileFigures(
        seen=_rows(seen) if seen is not None else None,
        stored=_rows(stored),
        rollups=_rows(rollups),
        counters=_rows(_counters(svc, body.start, body.end, body.org_id)),
        counters_since=since,
        raw_kept_from=_raw_kept_from(svc, {org for org, _ in stored | rollups}, now),
        counter_staleness_s=svc.counters.staleness_s(),
    )


@admin.post("/reconcile/epochs", response_model=EpochProbes)
async def reconcile_epochs(body: RangesRequest, svc: Services = Depends(services)) -> EpochProbes:
    """Per partition and log epoch stored within the ranges: its newest row's offset and event
    id. The broker's message at that offset tells whether the epoch is the broker's log."""
    lows, highs = _bounds(body.ranges)
    rows = await svc.store.query(*sql.epoch_probes(lows, highs))
    return EpochProbes(
        probes=[
            EpochProbe(partition=int(p), epoch=str(e), offset=int(o), event_id=str(i))
            for p, e, o, i in rows
        ]
    )


def _bounds(ranges: list[OffsetRange]) -> tuple[list[int], list[int]]:
    size = max((r.partition for r in ranges), default=-1) + 1
    lows, highs = [0] * size, [0] * size
    for r in ranges:
        lows[r.partition], highs[r.partition] = r.low, r.high
    return lows, highs


@admin.post("/events/stored", response_model=StoredEvents)
async def stored_events(body: StoredLookup, svc: Services = Depends(services)) -> StoredEvents:
    """Which of these event ids are already stored (backfills and DLQ replays skip them)."""
    if not body.event_ids:
        return StoredEvents(stored=[])
    rows = await svc.store.query(*sql.stored_event_ids(body.event_ids, body.org_ids))
    return StoredEvents(stored=sorted(str(r[0]) for r in rows))


async def _stored(
    svc: Services,
    body: ReconcileRequest,
    epochs: list[list[str]] | None = None,
    lows: list[int] | None = None,
    highs: list[int] | None = None,
) -> rec.Table:
    query = sql.reconcile_figures(body.start, body.end, body.org_id, epochs, lows, highs)
    table: rec.Table = {}
    for org, day, line_item, n, ids, billable, cost in await svc.store.query(*query):
        rec.add_stored(table, org, day, line_item, int(n), int(ids), int(billable), int(cost))
    return table


async def _rollups(svc: Services, body: ReconcileRequest) -> rec.Table:
    table: rec.Table = {}
    query = sql.rollup_figures(body.start, body.end, body.org_id)
    for org, day, line_item, events, billable, cost in await svc.store.query(*query):
        rec.add_rollup(table, org, day, line_item, int(events), int(billable), int(cost))
    return table


def _counters(svc: Services, start: date, end: date, org_id: str | None) -> rec.Table:
    first, last = counters.day_bucket(start), counters.day_bucket(end)
    names = set(rec.MONEY_AND_METERS)
    table: rec.Table = {}
    for (org, name, bucket), value in list(svc.counters.values.items()):
        if name in names and first <= bucket < last and (org_id is None or org == org_id):
            table.setdefault((org, counters.day_of(bucket)), {})[name] = value
    return table


def _raw_kept_from(svc: Services, orgs: set[str], now: datetime) -> dict[str, date]:
    """The first day of raw events each org's plan retention keeps (as the sweeper reads it)."""
    days = {
        org: account(svc.registry, svc.plans, org, now).plan.log_retention_days
        for org in orgs
        if org in svc.registry.orgs
    }
    return {org: cutoff.date() for cutoff, group in cutoffs(days, now).items() for org in group}


def _rows(table: rec.Table) -> list[FigureRow]:
    return [
        FigureRow(org_id=org, day=day, figures=figures)
        for (org, day), figures in sorted(table.items())
    ]
