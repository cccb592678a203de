"""Admission: `POST /api/v2/quota/check`, in the hot path of every agent call.

The route gathers inputs from memory (plan in force, subscription, counter figures) and
renders the pure decision of `tally.domain.admission`. A strict check (sessions, or one that
reserves) then has its meter's cap decided by the worker that owns the org (api.admissions).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Response

from api import admissions, figures
from api.accounts import account
from api.auth import require_scope, services
from api.errors import ApiError
from api.openapi import errors, fresh
from api.registry import ApiKey
from api.routes.quota import freshness
from api.state import Services
from schemas.admission import CheckAllowed, CheckRequest
from tally import metrics
from tally.domain.admission import Ask, Context, decide, from_worker
from tally.domain.windows import Window
from tally.store import queries

router = APIRouter(prefix="/api/v2", tags=["admission"], responses=errors("unauthorized"))


@router.post(
    "/quota/check",
    response_model=CheckAllowed,
    responses={
        **fresh(CheckAllowed, "Allowed: go on"),
        **errors(
            "invalid_request",
            "payment_required",
            "plan_limit_error",
            "billing_limit_reached",
            "rate_limited",
            "concurrency_limit",
            "quota_unavailable",
        ),
    },
)
async def check(
    body: CheckRequest,
    response: Response,
    key: ApiKey = Depends(require_scope("quota:read")),
    svc: Services = Depends(services),
) -> CheckAllowed:
    """May the calling org go on? 200 to go ahead; otherwise the error says why and what to do.

    A `sessions` check, or one with `reserve`, is strict: the worker that owns the org decides
    it in log order against its exact figures plus the reservations held, so no number of
    concurrent callers or API replicas admits more than the plan allows. An admitted strict
    check answers a `reservation_id` that holds its amount until the usage event carrying it
    (for sessions, the `session.started`) settles it, or until it lapses
    (`TALLY_SESSION_RESERVATION_TTL_S` for sessions, `ttl_s` for `reserve`). When no decision
    comes within `TALLY_ADMISSION_WAIT_S`, the answer is 503 `quota_unavailable` with
    Retry-After, never an admission. Test keys are never limited by a cap (their traffic
    never counts) but obey the plan's model rules and the payment status.

    A `runs` check at the cap that names a `run_id` is allowed when that run is already
    counted this billing period: the one check that asks the store, and only at the cap.
    """
    now = datetime.now(UTC)
    org_id = key.org_id
    acct = account(svc.registry, svc.plans, org_id, now)
    used = figures.used(svc.counters, org_id, acct.window, now)
    amount = body.reserve or body.amount
    strict = key.mode == "live" and (body.meter == "sessions" or body.reserve is not None)
    ask = Ask(body.meter, amount, body.model, body.mode, "test" if key.mode == "test" else "live")
    ctx = Context(acct.plan, acct.subscription, acct.window, used, now, acct.default_model, strict)
    d = decide(ask, ctx)
    at_cap = d.code == "billing_limit_reached" and body.meter == "runs"
    if at_cap and body.run_id and await _run_counted(svc, org_id, body.run_id, acct.window):
        d = decide(replace(ask, counted=True), ctx)
    headers = freshness(svc)
    reservation = None
    if d.allowed and strict and d.limit is not None:
        ttl = svc.settings.session_reservation_ttl_s if body.meter == "sessions" else body.ttl_s
        reservation = await admissions.decide(
            svc, org_id, body.meter, amount, d.limit, acct.window, ttl, now
        )
        d = from_worker(ask, ctx, d.limit, reservation.used, reservation.allowed)
    metrics.quota_check(body.meter, d.code or "ok")
    if not d.allowed:
        assert d.code is not None
        if d.retry_after is not None:
            headers["Retry-After"] = str(d.retry_after)
        raise ApiError(d.status, d.code, d.message, headers)
    response.headers.update(headers)
    return CheckAllowed(
        allowed=True,
        meter=body.meter,
        amount=amount,
        limit=d.limit,
        used=d.used,
        remaining=d.remaining,
        reset_at=d.reset_at,
        reservation_id=reservation.reservation_id if reservation else None,
        expires_at=reservation.expires_at if reservation else None,
    )


async def _run_counted(svc: Services, org_id: str, run_id: str, window: Window) -> bool:
    """Whether the store holds a live event of the run in the window. A store that does not
    answer cannot say: the check answers 503 then, rather than refuse a run that may count."""
    try:
        rows = await svc.store.query(*queries.run_counted(org_id, run_id, window.start, window.end))
    except Exception as exc:
        raise ApiError(
            503,
            "quota_unavailable",
            "cannot tell whether the run is already counted (the store does not answer): "
            "retry in a few seconds",
            {"Retry-After": "5"},
        ) from exc
    return bool(rows)
