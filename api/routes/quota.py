"""Quota reads, answered from the in-memory counter table only."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Response

from api.auth import current_key, services
from api.registry import ApiKey
from api.state import Services
from schemas.api import ErrorBody, TokenQuota
from tally.domain import counters
from tally.domain.quota import billing_window, day_buckets, figures

router = APIRouter(
    prefix="/api/v2",
    tags=["quota"],
    responses={401: {"model": ErrorBody, "description": "Missing or unknown key"}},
)


def freshness_headers(svc: Services, response: Response) -> None:
    """How far the figures can be trusted, without touching the seed's body."""
    current_ms, lag = svc.counters.freshness()
    if current_ms is not None:
        stamp = datetime.fromtimestamp(current_ms / 1000, UTC)
        response.headers["X-Tally-Counters-As-Of"] = stamp.isoformat().replace("+00:00", "Z")
        response.headers["X-Tally-Staleness-Ms"] = str(max(0, int(time.time() * 1000) - current_ms))
    if lag is not None:
        response.headers["X-Tally-Stream-Lag"] = str(lag)


@router.get("/quota/tokens", response_model=TokenQuota)
async def token_quota(
    response: Response, key: ApiKey = Depends(current_key), svc: Services = Depends(services)
) -> TokenQuota:
    """Tokens used this billing period against the plan's allowance."""
    org = svc.registry.orgs[key.org_id]
    plan = svc.plans.get(org.plan)
    limit = plan.tokens_per_period if plan else None
    window = billing_window(org.signup_date, datetime.now(UTC))
    used = (
        svc.counters.total(org.org_id, counters.TOKENS, day_buckets(window))
        if svc.counters.ready.is_set()
        else None
    )
    f = figures(limit, used)
    freshness_headers(svc, response)
    return TokenQuota(
        limit=f.limit,
        used=f.used,
        remaining=f.remaining,
        window_start=window.start,
        window_end=window.end,
    )
