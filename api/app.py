"""The API app factory."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from api import errors, openapi
from api.fastpath import QuotaFastPath
from api.metrics import HttpMetrics
from api.routes import (
    admin,
    admission,
    alerts,
    closure,
    credits,
    dashboard,
    events,
    health,
    invoices,
    logs,
    ops,
    plans,
    quota,
    sessions,
    subscriptions,
    traces,
    usage,
    webhooks,
)
from api.state import Services

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class TallyAPI(FastAPI):
    """The FastAPI app, with the quota reads answered in front of it (`api.fastpath`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entry = QuotaFastPath(super().__call__, self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)


def create_app(services: Services, lifespan: Lifespan | None = None) -> FastAPI:
    app = TallyAPI(
        title="Tally",
        version="0.1.0",
        description="Usage metering for AI-agent platforms: quotas, admission and breakdowns.",
        lifespan=lifespan,
        # Tally measures itself (`tally.metrics`, Prometheus); FastAPI's own OpenTelemetry
        # hooks would otherwise look for a configured provider on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    errors.install(app)
    app.include_router(health.router)
    app.include_router(quota.router)
    app.include_router(admin.router)
    app.include_router(closure.router)
    app.include_router(usage.router)
    app.include_router(credits.router)
    app.include_router(logs.router)
    app.include_router(invoices.router)
    app.include_router(invoices.admin)
    app.include_router(dashboard.router)
    app.include_router(events.router)
    app.include_router(traces.router)
    app.include_router(admission.router)
    app.include_router(plans.router)
    app.include_router(subscriptions.router)
    app.include_router(ops.router)
    app.include_router(ops.admin)
    app.include_router(sessions.router)
    app.include_router(sessions.admin)
    app.include_router(alerts.router)
    app.include_router(webhooks.router)
    app.include_router(webhooks.admin)
    app.add_middleware(HttpMetrics)
    openapi.install(app)
    return app
