"""Alert rules and the alerts that fired (org key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from api.accounts import account
from api.alerts.service import Alerting
from api.auth import require_scope, services
from api.errors import ApiError
from api.openapi import errors
from api.registry import ApiKey
from api.state import Services
from schemas.alerts import AlertData, AlertList, AlertOut, RuleOut, RulesIn, RulesOut
from schemas.api import ErrorBody
from tally.domain import alerts as a
from tally.domain.quota import Used, overview

_BILLING = require_scope("billing:read")  # alerts and webhooks are billing settings
router = APIRouter(prefix="/api/v2", tags=["alerts"], responses=errors("unauthorized"))
# A process started without its alerts (none of Tally's own commands does that) answers 503.
OFF: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Alerts are not enabled in this process"}
}


async def alerting(svc: Services = Depends(services)) -> Alerting:
    alerts = svc.part(Alerting)
    if alerts is None:
        raise ApiError(503, "unavailable", "alerts are not enabled in this process")
    return alerts


def rules_in_force(svc: Services, alerts: Alerting, org_id: str) -> list[a.Rule]:
    now = datetime.now(UTC)
    acct = account(svc.registry, svc.plans, org_id, now)
    defaults = a.default_rules(overview(acct.plan, acct.window, now, Used()))
    return a.in_force(defaults, alerts.book.rules.get(org_id, []))


def _rules_out(rules: list[a.Rule]) -> RulesOut:
    return RulesOut(
        rules=[
            RuleOut(
                meter=r.meter,
                at=r.at,
                percent=r.percent,
                below=r.below,
                days=r.days,
                default=r.default,
            )  # fmt: skip
            for r in rules
        ]
    )


@router.get("/alerts/rules", response_model=RulesOut, responses=OFF)
async def get_rules(
    key: ApiKey = Depends(_BILLING),
    svc: Services = Depends(services),
    alerts: Alerting = Depends(alerting),
) -> RulesOut:
    """The rules in force: 80% and 100% of every limited meter, 3 days before a trial ends,
    then the org's own."""
    return _rules_out(rules_in_force(svc, alerts, key.org_id))


@router.put(
    "/alerts/rules",
    response_model=RulesOut,
    responses={**errors("unknown_meter"), **OFF},
)
async def put_rules(
    body: RulesIn,
    key: ApiKey = Depends(_BILLING),
    svc: Services = Depends(services),
    alerts: Alerting = Depends(alerting),
) -> RulesOut:
    """Replace the org's own rules: `at` an amount (unlimited meters too) or `percent` of
    the limit on a meter, `below` on `credits` (micro-units), `days` on `trial`."""
    known = [*a.meters(), a.CREDITS, a.TRIAL]
    for r in body.rules:
        if r.meter not in known:
            raise ApiError(
                400, "unknown_meter", f"no meter {r.meter!r}: use one of {', '.join(known)}"
            )
    own = [a.Rule(**r.model_dump()) for r in body.rules]
    await alerts.book.set_rules(key.org_id, own, datetime.now(UTC))
    return _rules_out(rules_in_force(svc, alerts, key.org_id))


@router.get("/alerts", response_model=AlertList, responses=OFF)
async def list_alerts(
    limit: int = Query(100, ge=1, le=1000),
    key: ApiKey = Depends(_BILLING),
    alerts: Alerting = Depends(alerting),
) -> AlertList:
    """The org's alerts, newest first, as they were published and delivered."""
    found = await alerts.book.history(key.org_id, limit)
    return AlertList(alerts=[alert_out(x) for x in found])


def alert_out(x: a.Alert) -> AlertOut:
    p = x.payload()
    return AlertOut(type=p["type"], timestamp=x.at, data=AlertData(**p["data"]))
