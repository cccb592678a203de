"""Authentication: org keys and the admin key, both as `Authorization: Bearer <key>`."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.registry import ApiKey
from api.state import Services
from schemas.access import Scope
from tally.domain.keys import admin_actor, key_id_of

# The dependencies are coroutines on purpose: they never block (a hash and dict lookups),
# and FastAPI would run plain functions in a thread pool, adding a thread hop to every call.
bearer = HTTPBearer(auto_error=False, description="An org key, or the admin key for /admin.")


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "send your API key as `Authorization: Bearer <key>`")
    return credentials.credentials


async def current_key(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    svc: Services = Depends(services),
) -> ApiKey:
    """The org key making the request; its org is the only one it may read."""
    token = _token(credentials)
    record = svc.registry.authenticate(token)
    if record is None:
        key_id = key_id_of(token)
        known = svc.registry.keys.get(key_id) if key_id else None
        if known is not None and svc.registry.is_closed(known.org_id):
            # Only the key id is looked at (no secret compared): it says nothing a caller
            # without the key could use, and the answer is the same 401.
            raise ApiError(
                401, "unauthorized", f"org {known.org_id!r} is closed: its keys no longer work"
            )
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    return record


class RequireScope:
    """The dependency of every org route: the org key making the request, which must carry
    `scope`. `route_scope` reads it back from a route, for the OpenAPI document and the test
    that walks every route."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, key: ApiKey = Depends(current_key)) -> ApiKey:
        check_scope(key, self.scope)
        return key


def require_scope(scope: Scope) -> RequireScope:
    """`key: ApiKey = Depends(require_scope("usage:read"))`: one declaration per route."""
    return RequireScope(scope)


def check_scope(key: ApiKey, scope: str) -> None:
    """Refuse a key without `scope` (also used by the quota fast path and, for the cost
    figures inside a usage report, by the routes that decide what to show)."""
    if scope not in key.scopes:
        raise ApiError(403, "forbidden", missing_scope(key, scope))


def missing_scope(key: ApiKey, scope: str) -> str:
    held = ", ".join(key.scopes)
    return (
        f"this key lacks the {scope!r} scope (it has: {held}): issue a key with it "
        f"(POST /api/v2/admin/orgs/{key.org_id}/keys)"
    )


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every FastAPI route of the app, those of included routers too, with the dependencies
    their routers add (`.path_format`, `.methods`, `.dependant`)."""
    return [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]


def route_scope(route: RouteContext) -> str | None:
    """The scope a route requires, if it requires one."""
    return next((c.scope for c in _calls(route) if isinstance(c, RequireScope)), None)


def is_admin_route(route: RouteContext) -> bool:
    return any(c is require_admin for c in _calls(route))


def _calls(route: RouteContext) -> Iterator[object]:
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        yield dependant.call
        pending.extend(dependant.dependencies)


async def require_admin(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    svc: Services = Depends(services),
) -> str:
    """The admin key, checked in constant time; returns its actor id for the audit trail."""
    token = _token(credentials)
    admin = svc.settings.admin_key
    if admin is None:
        raise ApiError(403, "forbidden", "admin is disabled: set TALLY_ADMIN_KEY to enable it")
    secret = admin.get_secret_value()
    if not hmac.compare_digest(token.encode(), secret.encode()):
        raise ApiError(401, "unauthorized", "this endpoint needs the admin key")
    return admin_actor(secret)
