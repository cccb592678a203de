"""Quota reads without the framework: the hot path of every gateway call, in plain ASGI.

A `GET` of a quota read with `Authorization: Bearer <known key>` and no query string is
answered here, from the same functions as the FastAPI routes (`api.routes.quota`) and with
the same bytes; anything else (no key, an unknown one, a query string, another method) goes
on to the routes, which word the error. Routing, dependency injection and response
validation cost several times the read itself, which is a few dict lookups.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from api.registry import ApiKey
from api.routes import quota
from api.state import Services

Read = Callable[[Services, ApiKey], BaseModel]
READS: dict[str, Read] = {
    "/api/v2/quota/tokens": quota.tokens_body,
    "/api/v2/quota/tool-calls": quota.tool_calls_body,
    "/api/v2/quota/requests": quota.requests_body,
    "/api/v2/sessions/quota": quota.sessions_body,
}
_JSON = (b"content-type", b"application/json")


class _Route(NamedTuple):
    """What `api.metrics.HttpMetrics` labels a request with: the route's path."""

    path: str


class QuotaFastPath:
    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self.routes = {path: _Route(path) for path in READS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read = READS.get(scope["path"]) if scope["type"] == "http" else None
        if read is not None and scope["method"] == "GET" and not scope["query_string"]:
            svc: Services = self.api.state.services
            key = _bearer(scope["headers"])
            record = svc.registry.authenticate(key) if key else None
            if record is not None:
                scope["route"] = self.routes[scope["path"]]
                model = read(svc, record)
                body = model.__pydantic_serializer__.to_json(model)
                headers = [(b"content-length", str(len(body)).encode()), _JSON]
                for name, value in quota.freshness(svc).items():
                    headers.append((_header_name(name), value.encode()))
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@functools.cache
def _header_name(name: str) -> bytes:
    return name.lower().encode()


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of `Authorization: Bearer <key>` (the scheme in any case), as HTTPBearer."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token if scheme.lower() == "bearer" and token else None
    return None
