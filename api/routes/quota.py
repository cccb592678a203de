"""Quota reads, answered from the in-memory counter table only (never from ClickHouse)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Response

from api import figures
from api.auth import current_key, services
from api.openapi import errors, fresh
from api.registry import ApiKey
from api.state import Services
from api.subscriptions import Account, account
from schemas.api import (
    MeterQuota,
    PendingChange,
    QuotaMeters,
    QuotaOverview,
    RequestQuota,
    SessionQuota,
    TokenQuota,
)
from tally.domain.quota import Meter, Overview, overview

router = APIRouter(prefix="/api/v2", tags=["quota"], responses=errors("unauthorized"))


def freshness(svc: Services) -> dict[str, str]:
    """How far the figures can be trusted: the time the counters are current to, the lag."""
    headers = {}
    current_ms, lag = svc.counters.freshness()
    if current_ms is not None:
        stamp = datetime.fromtimestamp(current_ms / 1000, UTC)
        headers["X-Tally-Counters-As-Of"] = stamp.isoformat().replace("+00:00", "Z")
        headers["X-Tally-Staleness-Ms"] = str(max(0, int(time.time() * 1000) - current_ms))
    if lag is not None:
        headers["X-Tally-Stream-Lag"] = str(lag)
    return headers


def freshness_headers(svc: Services, response: Response) -> None:
    """How far the figures can be trusted, without touching the seed's body."""
    response.headers.update(freshness(svc))


def read(svc: Services, key: ApiKey) -> tuple[Account, Overview]:
    """The org's account and every meter, now (memory only)."""
    now = datetime.now(UTC)
    acct = account(svc.registry, svc.plans, key.org_id, now)
    used = figures.used(svc.counters, key.org_id, acct.window, now)
    return acct, overview(acct.plan, acct.window, now, used)


def tokens_body(svc: Services, key: ApiKey) -> TokenQuota:
    m = read(svc, key)[1].tokens
    return TokenQuota(
        limit=m.limit,
        used=m.used,
        remaining=m.remaining,
        window_start=m.window.start,
        window_end=m.window.end,
    )


def tool_calls_body(svc: Services, key: ApiKey) -> MeterQuota:
    return _meter(read(svc, key)[1].tool_calls)


def requests_body(svc: Services, key: ApiKey) -> RequestQuota:
    return _requests(read(svc, key)[1])


def sessions_body(svc: Services, key: ApiKey) -> SessionQuota:
    return _sessions(read(svc, key)[1])


def _meter(m: Meter) -> MeterQuota:
    return MeterQuota(
        limit=m.limit,
        used=m.used,
        remaining=m.remaining,
        window_start=m.window.start,
        window_end=m.window.end,
    )


def _requests(o: Overview) -> RequestQuota:
    return RequestQuota(
        **_meter(o.requests).model_dump(),
        minute=_meter(o.requests_minute),
        day=_meter(o.requests_day),
    )


def _sessions(o: Overview) -> SessionQuota:
    s = o.sessions
    return SessionQuota(limit=s.limit, active=s.active, remaining=s.remaining)


def pending_of(acct: Account) -> PendingChange | None:
    p = acct.subscription.pending
    if p is None or p.plan is None:
        return None
    return PendingChange(plan=p.plan, effective_at=p.effective_at)


@router.get("/quota/tokens", response_model=TokenQuota, responses=fresh(TokenQuota))
async def token_quota(
    response: Response, key: ApiKey = Depends(current_key), svc: Services = Depends(services)
) -> TokenQuota:
    """Tokens used this billing period against the plan's allowance."""
    freshness_headers(svc, response)
    return tokens_body(svc, key)


@router.get("/quota/tool-calls", response_model=MeterQuota, responses=fresh(MeterQuota))
async def tool_call_quota(
    response: Response, key: ApiKey = Depends(current_key), svc: Services = Depends(services)
) -> MeterQuota:
    """Successful live tool calls this billing period (failed and test-key calls are free)."""
    freshness_headers(svc, response)
    return tool_calls_body(svc, key)


@router.get("/quota/requests", response_model=RequestQuota, responses=fresh(RequestQuota))
async def request_quota(
    response: Response, key: ApiKey = Depends(current_key), svc: Services = Depends(services)
) -> RequestQuota:
    """Live gateway requests this billing period, with the minute and day burst windows."""
    freshness_headers(svc, response)
    return requests_body(svc, key)


@router.get("/sessions/quota", response_model=SessionQuota, responses=fresh(SessionQuota))
async def session_quota(
    response: Response, key: ApiKey = Depends(current_key), svc: Services = Depends(services)
) -> SessionQuota:
    """Sessions running now against the plan's concurrency limit."""
    freshness_headers(svc, response)
    return sessions_body(svc, key)


@router.get("/quota", response_model=QuotaOverview, responses=fresh(QuotaOverview))
async def quota(
    response: Response, key: ApiKey = Depends(current_key), svc: Services = Depends(services)
) -> QuotaOverview:
    """Every meter in every window (month, day, minute, concurrency) in one read."""
    freshness_headers(svc, response)
    acct, o = read(svc, key)
    sub = acct.subscription
    return QuotaOverview(
        org_id=key.org_id,
        plan=acct.plan.name,
        status=sub.status,
        trial_ends_at=sub.trial_ends_at,
        pending_change=pending_of(acct),
        window_start=acct.window.start,
        window_end=acct.window.end,
        meters=QuotaMeters(
            tokens=_meter(o.tokens),
            tool_calls=_meter(o.tool_calls),
            requests=_requests(o),
            upstream_cost_micros=_meter(o.upstream_cost_micros),
            sessions=_sessions(o),
        ),
    )
