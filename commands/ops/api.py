"""A small client for the API endpoints the operations commands use."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class ApiUnavailable(RuntimeError):
    """The API did not answer, or refused the request."""


class Api:
    """`async with Api(url, admin_key) as api:`; `transport` serves tests without a socket."""

    def __init__(
        self,
        url: str,
        admin_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"API {self.url} is unreachable: {exc!r}") from None

    async def readiness(self) -> tuple[bool, dict[str, bool]]:
        r = await self._request("GET", "/readyz")
        body = r.json()
        return r.status_code == 200, dict(body.get("checks", {}))

    async def metrics(self) -> str:
        r = await self._request("GET", "/metrics")
        _ok(r)
        return r.text

    async def admin(self, path: str, body: dict[str, Any]) -> Any:
        if not self.admin_key:
            raise ApiUnavailable(f"{path} needs the admin key: set TALLY_ADMIN_KEY")
        r = await self._request("POST", f"/api/v2/admin{path}", json=body)
        _ok(r)
        return r.json()

    async def admin_call(self, method: str, path: str) -> Any:
        """An admin endpoint without a body (GET, DELETE)."""
        if not self.admin_key:
            raise ApiUnavailable(f"{path} needs the admin key: set TALLY_ADMIN_KEY")
        r = await self._request(method, f"/api/v2/admin{path}")
        _ok(r)
        return r.json()

    async def stored(self, event_ids: list[str], org_ids: list[str] | None = None) -> set[str]:
        """The event ids among these that are already stored."""
        out: set[str] = set()
        for i in range(0, len(event_ids), 10_000):
            body = {"event_ids": event_ids[i : i + 10_000], "org_ids": org_ids}
            out.update((await self.admin("/events/stored", body))["stored"])
        return out


def _ok(r: httpx.Response) -> None:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text[:200]
        raise ApiUnavailable(f"{r.request.method} {r.request.url.path}: {r.status_code} {message}")
