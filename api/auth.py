"""Authentication: org keys and the admin key, both as `Authorization: Bearer <key>`."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.registry import ApiKey
from api.state import Services

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
    record = svc.registry.authenticate(_token(credentials))
    if record is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    return record


async def require_admin(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    svc: Services = Depends(services),
) -> None:
    token = _token(credentials)
    admin = svc.settings.admin_key
    if admin is None:
        raise ApiError(403, "forbidden", "admin is disabled: set TALLY_ADMIN_KEY to enable it")
    if not hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "this endpoint needs the admin key")
