"""HTTP latency by route: a plain ASGI middleware (no per-request task or body copy)."""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally import metrics


class HttpMetrics:
    """Observe each HTTP request's duration under its route template, never its raw path
    (`/api/v2/runs/{run_id}/usage`, not one series per run); unrouted paths share one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled series, looked up once each (`labels()` costs as much as a quota read's
        # own lookups).
        self._series: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (route, scope["method"], status)
            series = self._series.get(labels)
            if series is None:
                series = metrics.http_seconds.labels(route, scope["method"], str(status))
                self._series[labels] = series
            series.observe(elapsed)
