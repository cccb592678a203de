"""HTTP latency by route: a plain ASGI middleware (no per-request task or body copy)."""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally import metrics

# The labelled series, looked up once each (`labels()` costs as much as a quota read's own
# lookups). As many as the histogram has: one per route template, method and status.
_series: dict[tuple[str, str, int], Histogram] = {}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    """One request's duration under its route template (`api.fastpath` answers some itself)."""
    labels = (route, method, status)
    series = _series.get(labels)
    if series is None:
        series = _series[labels] = metrics.http_seconds.labels(route, method, str(status))
    series.observe(seconds)


class HttpMetrics:
    """Observe each HTTP request's duration under its route template, never its raw path
    (`/api/v2/runs/{run_id}/usage`, not one series per run); unrouted paths share one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            observe(route, scope["method"], status, time.perf_counter() - started)
