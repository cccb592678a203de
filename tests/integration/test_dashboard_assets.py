"""The dashboard's files: served by Tally, and nothing in them reaches for another host."""

from __future__ import annotations

import re
from importlib import resources

from api.routes.dashboard import ASSETS


async def test_root_redirects_to_the_dashboard(client):
    r = await client.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/dashboard"
    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'src="/dashboard/app.js"' in page.text


async def test_every_asset_is_served_and_nothing_else(client):
    for name, media_type in ASSETS.items():
        r = await client.get(f"/dashboard/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"] == media_type
    for name in ("secrets.txt", "..%2Fapp.py", "index.htm"):
        r = await client.get(f"/dashboard/{name}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


def test_the_page_loads_nothing_from_elsewhere():
    folder = resources.files("api") / "dashboard"
    shipped = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert shipped == sorted(ASSETS)
    for name in ASSETS:
        text = (folder / name).read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "<iframe" not in text
