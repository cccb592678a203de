"""Every error the API returns has the one shape, unexpected ones included."""

import httpx

from api.app import create_app


async def test_unexpected_errors_keep_the_error_shape():
    app = create_app(None)  # type: ignore[arg-type]

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/boom")
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error"
        r = await c.get("/no/such/path")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        r = await c.put(
            "/api/v2/workspace",
            content=b"\xff\xfe{",
            headers={"content-type": "application/json", "authorization": "Bearer x"},
        )
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
        r = await c.delete("/api/v2/plans")
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
