"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.auth import services
from api.state import Services
from schemas.api import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(svc: Services = Depends(services)) -> JSONResponse:
    """200 only when the broker, the store and the counter table are ready."""
    checks = {
        "broker": await svc.counters.broker_reachable(),
        "counter_table": svc.counters.ready.is_set(),
        "store": await svc.store.ping(),
    }
    for name, check in svc.checks.items():
        try:
            checks[name] = await check()
        except Exception:
            checks[name] = False
    ok = all(checks.values())
    body = Health(status="ok" if ok else "starting", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
