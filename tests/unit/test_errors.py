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


async def test_405_says_which_methods_the_path_allows():
    app = create_app(None)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        cases = {
            ("DELETE", "/api/v2/plans"): "GET",
            ("POST", "/api/v2/quota/tokens"): "GET",  # past the quota fast path
            ("HEAD", "/api/v2/quota/tokens"): "GET",
            ("GET", "/api/v2/events"): "POST",
            # a path served by several routes: all of them, not the first that matched
            ("POST", "/api/v2/admin/orgs/acme/subscription"): "GET, PUT, DELETE",
            ("TRACE", "/api/v2/workspace"): "GET, PUT",
        }
        for (method, path), allow in cases.items():
            r = await c.request(method, path)
            assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)
            if method != "HEAD":
                assert r.json()["error"]["code"] == "method_not_allowed"
