"""Webhook endpoints, their deliveries and redelivery (org key; the admin key for any org).

Endpoints are a plan feature (`webhook_alerts` in the catalogue). A URL must be https and,
unless TALLY_WEBHOOK_ALLOW_PRIVATE is set, every address its host resolves to public.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query, Response

from api.accounts import account
from api.alerts.book import Endpoint, version_of
from api.alerts.dispatcher import Delivery, delivery_of
from api.alerts.service import Alerting
from api.alerts.targets import check_target
from api.auth import require_admin, require_scope, services
from api.errors import ApiError
from api.openapi import errors
from api.registry import ApiKey
from api.routes.alerts import OFF, alerting
from api.state import Services
from schemas.alerts import (
    AttemptOut,
    DeliveryList,
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from tally.domain.webhooks import TargetRefused, new_secret
from tally.store import alerts as sql

FEATURE = "webhook_alerts"

_BILLING = require_scope("billing:read")  # alerts and webhooks are billing settings
router = APIRouter(prefix="/api/v2", tags=["webhooks"], responses=errors("unauthorized"))
admin = APIRouter(
    prefix="/api/v2/admin/orgs/{org_id}",
    tags=["webhooks"],
    dependencies=[Depends(require_admin)],
    responses=errors("unauthorized", "forbidden"),
)
_CREATE = {**errors("plan_limit_error", "target_refused", "not_found"), **OFF}
_ONE = {**errors("not_found"), **OFF}


def _out(e: Endpoint) -> WebhookOut:
    return WebhookOut(
        id=e.id,
        url=e.url,
        events=list(e.events),
        state="enabled" if e.state == "enabled" else "disabled",
        failing_since=e.failing_since,
        created_at=e.created_at,
    )


async def create(svc: Services, alerts: Alerting, org_id: str, body: WebhookCreate) -> Endpoint:
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    plan = account(svc.registry, svc.plans, org_id, datetime.now(UTC)).plan
    if FEATURE not in plan.features:
        with_it = [p.display_name for p in svc.plans.plans if FEATURE in p.features]
        raise ApiError(
            403,
            "plan_limit_error",
            f"webhook alerts are not included in the {plan.display_name} plan: upgrade to"
            f" {' or '.join(with_it) or 'a plan that includes them'}",
        )
    try:
        await check_target(body.url, svc.settings.webhook_allow_private)
    except TargetRefused as exc:
        raise ApiError(400, "target_refused", str(exc)) from None
    now = datetime.now(UTC)
    e = Endpoint(
        org_id, "ep_" + uuid.uuid4().hex, body.url, tuple(dict.fromkeys(body.events)),
        new_secret(), "enabled", None, now, version_of(now),
    )  # fmt: skip
    return await alerts.book.save_endpoint(e)


def _endpoint(alerts: Alerting, org_id: str, endpoint_id: str) -> Endpoint:
    e = alerts.book.endpoints.get(endpoint_id)
    if e is None or e.org_id != org_id:
        raise ApiError(404, "not_found", f"no webhook endpoint {endpoint_id!r} in this org")
    return e


@router.post("/webhooks", status_code=201, response_model=WebhookCreated, responses=_CREATE)
async def create_webhook(
    body: WebhookCreate,
    key: ApiKey = Depends(_BILLING),
    svc: Services = Depends(services),
    alerts: Alerting = Depends(alerting),
) -> WebhookCreated:
    """Register an endpoint for the listed event types. The answer holds its signing secret
    (`whsec_...`, Standard Webhooks); keep it, it is not shown again."""
    e = await create(svc, alerts, key.org_id, body)
    return WebhookCreated(id=e.id, secret=e.secret)


@router.get("/webhooks", response_model=WebhookList, responses=OFF)
async def list_webhooks(
    key: ApiKey = Depends(_BILLING), alerts: Alerting = Depends(alerting)
) -> WebhookList:
    """The org's endpoints and their state (disabled after 3 days of failures)."""
    return WebhookList(webhooks=[_out(e) for e in alerts.book.org_endpoints(key.org_id)])


@router.delete("/webhooks/{endpoint_id}", status_code=204, response_class=Response, responses=_ONE)
async def delete_webhook(
    endpoint_id: str, key: ApiKey = Depends(_BILLING), alerts: Alerting = Depends(alerting)
) -> Response:
    """Remove an endpoint: nothing more is sent to it."""
    e = _endpoint(alerts, key.org_id, endpoint_id)
    await alerts.book.update_endpoint(e, datetime.now(UTC), state="deleted")
    return Response(status_code=204)


@router.post("/webhooks/{endpoint_id}/rotate-secret", response_model=WebhookCreated, responses=_ONE)
async def rotate_secret(
    endpoint_id: str, key: ApiKey = Depends(_BILLING), alerts: Alerting = Depends(alerting)
) -> WebhookCreated:
    """A new signing secret, used from the next attempt on; the old one stops at once."""
    e = _endpoint(alerts, key.org_id, endpoint_id)
    e = await alerts.book.update_endpoint(e, datetime.now(UTC), secret=new_secret())
    return WebhookCreated(id=e.id, secret=e.secret)


async def _attempts(alerts: Alerting, d: list[Delivery]) -> dict[str, list[AttemptOut]]:
    if not d:
        return {}
    rows = await alerts.book.store.query(
        *sql.attempts(d[0].org_id, d[0].endpoint_id, [x.msg_id for x in d])
    )
    out: dict[str, list[AttemptOut]] = {}
    for msg, _n, at, status, error in rows:
        out.setdefault(msg, []).append(
            AttemptOut(at=at.replace(tzinfo=UTC), status_code=status, error=error)
        )
    return out


def _delivery_out(d: Delivery, attempts: list[AttemptOut]) -> DeliveryOut:
    return DeliveryOut(
        id=d.msg_id,
        type=d.type,
        status=d.status,
        attempts=attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        created_at=d.created_at,
    )


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=DeliveryList, responses=_ONE)
async def deliveries(
    endpoint_id: str,
    limit: int = Query(100, ge=1, le=1000),
    key: ApiKey = Depends(_BILLING),
    alerts: Alerting = Depends(alerting),
) -> DeliveryList:
    """The endpoint's delivery log, newest first, with every attempt."""
    e = _endpoint(alerts, key.org_id, endpoint_id)
    rows = await alerts.book.store.query(*sql.endpoint_deliveries(e.org_id, e.id, limit))
    found = [delivery_of(r) for r in rows]
    tries = await _attempts(alerts, found)
    return DeliveryList(deliveries=[_delivery_out(d, tries.get(d.msg_id, [])) for d in found])


@router.post(
    "/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    responses=_ONE,
)
async def redeliver(
    endpoint_id: str,
    delivery_id: str,
    key: ApiKey = Depends(_BILLING),
    alerts: Alerting = Depends(alerting),
) -> DeliveryOut:
    """Send a delivery again, with the same `webhook-id`, now."""
    e = _endpoint(alerts, key.org_id, endpoint_id)
    rows = await alerts.book.store.query(*sql.delivery(e.org_id, e.id, delivery_id))
    if not rows:
        raise ApiError(404, "not_found", f"no delivery {delivery_id!r} to this endpoint")
    d = await alerts.dispatcher.redeliver(delivery_of(rows[0]))
    tries = await _attempts(alerts, [d])
    return _delivery_out(d, tries.get(d.msg_id, []))


@admin.post("/webhooks", status_code=201, response_model=WebhookCreated, responses=_CREATE)
async def admin_create_webhook(
    org_id: str,
    body: WebhookCreate,
    svc: Services = Depends(services),
    alerts: Alerting = Depends(alerting),
) -> WebhookCreated:
    """Register an endpoint for an org (the plan must include webhook alerts)."""
    e = await create(svc, alerts, org_id, body)
    return WebhookCreated(id=e.id, secret=e.secret)


@admin.get("/webhooks", response_model=WebhookList, responses=OFF)
async def admin_list_webhooks(org_id: str, alerts: Alerting = Depends(alerting)) -> WebhookList:
    """An org's endpoints and their state."""
    return WebhookList(webhooks=[_out(e) for e in alerts.book.org_endpoints(org_id)])
