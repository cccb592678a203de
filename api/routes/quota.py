"""Quota reads, answered from the in-memory counter table only (never from ClickHouse)."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Response

from api import figures
from api.accounts import Account, account
from api.auth import require_scope, services
from api.openapi import errors, fresh
from api.registry import ApiKey
from api.state import Services
from schemas.api import (
    MeterQuota,
    PendingChange,
    QuotaMeters,
    QuotaOverview,
    RequestQuota,
    Reserved,
    SessionQuota,
    TokenQuota,
)
from tally.domain import counters as c
from tally.domain.quota import Meter, Overview, Sessions, meter, overview
from tally.domain.quota import figures as quota_figures
from tally.domain.windows import day_window, minute_window

router = APIRouter(prefix="/api/v2", tags=["quota"], responses=errors("unauthorized"))


def freshness(svc: Services) -> dict[str, str]:
    """How far the figures can be trusted: the time the counters are current to, the lag."""
    headers = {}
    current_ms, lag = svc.counters.freshness()
    if current_ms is not None:
        headers["X-Tally-Counters-As-Of"] = _as_of(current_ms)
        headers["X-Tally-Staleness-Ms"] = str(max(0, int(time.time() * 1000) - current_ms))
    if lag is not None:
        headers["X-Tally-Stream-Lag"] = str(lag)
    return headers


@functools.lru_cache(maxsize=64)
def _as_of(ms: int) -> str:
    """A time in ms as RFC 3339 in UTC (the same few values are asked for again and again)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def freshness_headers(svc: Services, response: Response) -> None:
    """How far the figures can be trusted, without touching the seed's body."""
    response.headers.update(freshness(svc))


def current(svc: Services, key: ApiKey) -> tuple[datetime, Account]:
    """Now, and the org's account (plan, subscription, billing window) at that time."""
    now = datetime.now(UTC)
    return now, account(svc.registry, svc.plans, key.org_id, now)


def read(svc: Services, key: ApiKey) -> tuple[Account, Overview]:
    """The org's account and every meter, now (memory only)."""
    now, acct = current(svc, key)
    used = figures.used(svc.counters, key.org_id, acct.window, now)
    return acct, overview(acct.plan, acct.window, now, used)


# Each quota read computes its own meter only (the overview computes all of them, and a read
# is the hot path of every gateway call); `tally.domain.quota.meter` does the arithmetic.
# Each takes the time and the account of `current()`.


def tokens_body(svc: Services, key: ApiKey, now: datetime, acct: Account) -> TokenQuota:
    used = figures.monthly(svc.counters, key.org_id, c.TOKENS, acct.window)
    m = meter(acct.plan.tokens_per_period, used, acct.window)
    return TokenQuota(
        limit=m.limit,
        used=m.used,
        remaining=m.remaining,
        window_start=m.window.start,
        window_end=m.window.end,
    )


def tool_calls_body(svc: Services, key: ApiKey, now: datetime, acct: Account) -> MeterQuota:
    used = figures.monthly(svc.counters, key.org_id, c.TOOL_CALLS, acct.window)
    return _meter(meter(acct.plan.tool_calls_per_month, used, acct.window))


def runs_body(svc: Services, key: ApiKey, now: datetime, acct: Account) -> MeterQuota:
    used = figures.runs(svc.counters, key.org_id, acct.window)
    return _meter(meter(acct.plan.runs_per_month, used, acct.window))


def requests_body(svc: Services, key: ApiKey, now: datetime, acct: Account) -> RequestQuota:
    table, org, plan = svc.counters, key.org_id, acct.plan
    used = figures.monthly(table, org, c.REQUESTS, acct.window)
    return _requests(
        meter(plan.requests_per_month, used, acct.window),
        meter(
            plan.requests_per_minute, figures.requests_minute(table, org, now), minute_window(now)
        ),
        meter(plan.requests_per_day, figures.requests_day(table, org, now), day_window(now)),
    )


def sessions_body(svc: Services, key: ApiKey, now: datetime, acct: Account) -> SessionQuota:
    f = quota_figures(acct.plan.concurrent_sessions, figures.sessions(svc.counters, key.org_id))
    return SessionQuota(limit=f.limit, active=f.used, remaining=f.remaining)


def _meter(m: Meter) -> MeterQuota:
    return MeterQuota(
        limit=m.limit,
        used=m.used,
        remaining=m.remaining,
        window_start=m.window.start,
        window_end=m.window.end,
    )


def _requests(month: Meter, minute: Meter, day: Meter) -> RequestQuota:
    return RequestQuota(
        limit=month.limit,
        used=month.used,
        remaining=month.remaining,
        window_start=month.window.start,
        window_end=month.window.end,
        minute=_meter(minute),
        day=_meter(day),
    )


def _sessions(s: Sessions) -> SessionQuota:
    return SessionQuota(limit=s.limit, active=s.active, remaining=s.remaining)


def pending_of(acct: Account) -> PendingChange | None:
    p = acct.subscription.pending
    if p is None or p.plan is None:
        return None
    return PendingChange(plan=p.plan, effective_at=p.effective_at)


@router.get("/quota/tokens", response_model=TokenQuota, responses=fresh(TokenQuota))
async def token_quota(
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
) -> TokenQuota:
    """Tokens used this billing period against the plan's allowance."""
    freshness_headers(svc, response)
    return tokens_body(svc, key, *current(svc, key))


@router.get("/quota/tool-calls", response_model=MeterQuota, responses=fresh(MeterQuota))
async def tool_call_quota(
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
) -> MeterQuota:
    """Successful live tool calls this billing period (failed and test-key calls are free)."""
    freshness_headers(svc, response)
    return tool_calls_body(svc, key, *current(svc, key))


@router.get("/quota/runs", response_model=MeterQuota, responses=fresh(MeterQuota))
async def run_quota(
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
) -> MeterQuota:
    """Live runs this billing period: a run counts once, at its first live event in it."""
    freshness_headers(svc, response)
    return runs_body(svc, key, *current(svc, key))


@router.get("/quota/requests", response_model=RequestQuota, responses=fresh(RequestQuota))
async def request_quota(
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
) -> RequestQuota:
    """Live gateway requests this billing period, with the minute and day burst windows."""
    freshness_headers(svc, response)
    return requests_body(svc, key, *current(svc, key))


@router.get("/sessions/quota", response_model=SessionQuota, responses=fresh(SessionQuota))
async def session_quota(
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
) -> SessionQuota:
    """Sessions running now against the plan's concurrency limit."""
    freshness_headers(svc, response)
    return sessions_body(svc, key, *current(svc, key))


@router.get("/quota", response_model=QuotaOverview, responses=fresh(QuotaOverview))
async def quota(
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
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
            requests=_requests(o.requests, o.requests_minute, o.requests_day),
            upstream_cost_micros=_meter(o.upstream_cost_micros),
            sessions=_sessions(o.sessions),
            runs=_meter(o.runs),
        ),
        reserved=Reserved(
            **{
                m: figures.reserved(svc.counters, key.org_id, m)
                for m in ("tokens", "tool_calls", "requests", "upstream_cost_micros", "sessions")
            }
        ),
    )
