"""Quota reads without the framework: the hot path of every gateway call, in plain ASGI.

A `GET` of a quota read with `Authorization: Bearer <known key>` and no query string is
answered here, before FastAPI's middleware and routing, from the same functions as the
FastAPI routes (`api.routes.quota`) and with the same bytes; anything else (no key, an
unknown one, a query string, another method) goes on to the app, whose routes word the
error. Routing, dependency injection, response validation and the middleware stack cost
several times the read itself, which is a few dict lookups.

The key must carry the scope the FastAPI route declares (`quota:read`); a key without it
goes on to the route, which answers 403.

An org's answer is kept and given again, with fresh freshness headers, for as long as
nothing it was made of can have changed: the org's counters (`CounterTable.changes`), the
orgs and accounts (their `generation`), and the time (`Account.until`: the billing window
ends, a scheduled change takes effect; and the minute, for the request bursts). The key is
authenticated on every request.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from api import metrics
from api.accounts import Account
from api.auth import api_routes, route_scope
from api.registry import ApiKey
from api.routes import quota
from api.state import Services

Read = Callable[[Services, ApiKey, datetime, Account], BaseModel]
READS: dict[str, Read] = {
    "/api/v2/quota/tokens": quota.tokens_body,
    "/api/v2/quota/tool-calls": quota.tool_calls_body,
    "/api/v2/quota/requests": quota.requests_body,
    "/api/v2/quota/runs": quota.runs_body,
    "/api/v2/sessions/quota": quota.sessions_body,
}
_JSON = (b"content-type", b"application/json")
MAX_KEPT = 100_000  # answers kept (five reads per org); all are dropped past it


class _Answer(NamedTuple):
    body: bytes
    counters: tuple[int, int]  # CounterTable.changes(org) when it was made
    accounts: tuple[int, int]  # the registry's and the accounts' generation
    until: float  # epoch seconds it holds to


class QuotaFastPath:
    """`app` with the quota reads answered in front of it; `api` holds the services."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self.kept: dict[tuple[str, str], _Answer] = {}
        self._scopes: dict[str, str] = {}

    def _scope(self, path: str) -> str:
        """The scope the FastAPI route of `path` declares (`api.auth.require_scope`): the
        fast path answers for that route, so it asks for the same scope."""
        if not self._scopes:
            for route in api_routes(self.api):
                if route.path in READS:
                    scope = route_scope(route)
                    assert scope is not None, f"{route.path} declares no scope"
                    self._scopes[route.path] = scope
        return self._scopes[path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        read = READS.get(path)
        if read is not None and scope["method"] == "GET" and not scope["query_string"]:
            started = time.perf_counter()
            svc: Services = self.api.state.services
            key = _bearer(scope["headers"])
            record = svc.registry.authenticate(key) if key else None
            # A key without the route's scope goes on to the route, which words the 403.
            if record is not None and self._scope(path) in record.scopes:
                body = self._answer(svc, path, read, record)
                headers = [(b"content-length", str(len(body)).encode()), _JSON]
                for name, value in quota.freshness(svc).items():
                    headers.append((_header_name(name), value.encode()))
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                metrics.observe(path, "GET", 200, time.perf_counter() - started)
                return
        await self.app(scope, receive, send)

    def _answer(self, svc: Services, path: str, read: Read, record: ApiKey) -> bytes:
        org = record.org_id
        counters = svc.counters.changes(org)
        registry = svc.registry
        accounts = (registry.generation, registry.accounts.generation)
        kept = self.kept.get((path, org))
        if (
            kept is not None
            and kept.counters == counters
            and kept.accounts == accounts
            and time.time() < kept.until
        ):
            return kept.body
        now, acct = quota.current(svc, record)
        model = read(svc, record, now, acct)
        body = model.__pydantic_serializer__.to_json(model)
        minute_ends = (int(now.timestamp()) // 60 + 1) * 60
        if len(self.kept) >= MAX_KEPT:
            self.kept.clear()
        self.kept[path, org] = _Answer(
            body, counters, accounts, min(acct.until.timestamp(), minute_ends)
        )
        return body


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
