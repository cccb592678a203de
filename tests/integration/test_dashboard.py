"""The dashboard in headless Chromium against the running stack: what the page shows is
what the API says, to the micro-unit. Needs Debian's `chromium` and `chromium-driver`
(`make install` installs them)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from api.app import create_app
from tally.domain.quota import billing_window
from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually
from tests.workload import generate

pytestmark = pytest.mark.slow

INSTALL_HINT = (
    "the dashboard test needs headless Chromium and its driver: run `make install` "
    "(it installs them), or `apt-get install -y chromium chromium-driver`"
)


def money(micros: int) -> str:
    """The page's money format: exact micro-units, trailing zeros trimmed to two places."""
    units, frac = divmod(abs(micros), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{'-' if micros < 0 else ''}${units:,}.{digits}"


def test_money_format():
    assert money(0) == "$0.00"
    assert money(1) == "$0.000001"
    assert money(1_500_000) == "$1.50"
    assert money(-12_345_678_901) == "-$12,345.678901"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


@pytest_asyncio.fixture
async def base_url(stack) -> AsyncIterator[str]:
    """The real API app on the running test stack, served over HTTP on a free port."""
    async with serve(create_app(stack.services)) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Callable[[], Any]]:
    """Starts headless Chromium when the test asks for it, so that a missing browser fails
    the test itself (with the way to install it) rather than erroring in set-up."""
    started: list[Any] = []
    profile = tempfile.mkdtemp(prefix="tally-chromium-")

    def start() -> Any:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        driver_bin = shutil.which("chromedriver")
        if not chromium or not driver_bin:
            pytest.fail(INSTALL_HINT)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,2400",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
        driver.set_page_load_timeout(30)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


async def api(client: httpx.AsyncClient, key: str, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Drive the browser off the event loop, which keeps serving the page meanwhile."""
    return await asyncio.to_thread(fn)


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("TALLY_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


async def test_dashboard_shows_what_the_api_says(
    client,
    new_org: OrgFactory,
    send: Send,
    base_url: str,
    browser: Callable[[], Any],
    tmp_path: Path,
):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    now = datetime.now(UTC)
    signup = (now - timedelta(days=5)).date()
    org, key = await new_org(signup_date=signup)
    window = billing_window(signup, now)
    w = generate(org, window.start, now, runs=15)
    await send(*w.events)
    want = w.expected(window.start.date(), window.end.date())
    top = {"amount_micros": 25_000_000, "idempotency_key": "welcome"}
    r = await client.post(f"/api/v2/admin/orgs/{org}/credits", json=top, headers=bearer(ADMIN_KEY))
    assert r.status_code == 201

    async def counted() -> bool:
        body = await api(client, key, "/api/v2/usage/breakdown")
        quota = await api(client, key, "/api/v2/quota/tokens")
        return body["total"]["events"] == want["events"] and quota["used"] == want["tokens"]

    await eventually(counted, timeout=20)

    d = await in_thread(browser)
    wait = WebDriverWait(d, 20)
    css = d.find_element

    def ready(selector: str) -> Any:
        try:
            return wait.until(lambda drv: drv.find_element(By.CSS_SELECTOR, selector))
        except TimeoutException:
            errors = [css(By.ID, i).text for i in ("load-error", "login-error")]
            console = [entry["message"] for entry in d.get_log("browser")]
            message = f"{selector} never showed; page: {errors}; console: {console}"
            raise AssertionError(message) from None

    def log_in() -> None:
        d.get(f"{base_url}/")  # redirects to /dashboard
        assert d.current_url.endswith("/dashboard")
        form_input = ready("#login:not([hidden]) #key-input")
        form_input.send_keys("tk_live_000000000000_wrong")
        css(By.ID, "key-submit").click()
        wait.until(lambda drv: "not accepted" in drv.find_element(By.ID, "login-error").text)
        form_input.clear()
        form_input.send_keys(key)
        css(By.ID, "key-submit").click()
        ready("#app[data-ready='true']")
        css(By.ID, "auto-refresh").click()  # hold the page still while it is read

    await in_thread(log_in)

    period = {"from": window.start.date().isoformat(), "to": window.end.date().isoformat()}
    by_agent = await api(client, key, "/api/v2/usage/breakdown", group_by="agent", **period)
    by_item = await api(client, key, "/api/v2/usage/breakdown", group_by="line_item,item", **period)
    daily = await api(client, key, "/api/v2/usage/daily", **period)
    quota = await api(client, key, "/api/v2/quota/tokens")
    full_quota = await client.get("/api/v2/quota", headers=bearer(key))
    if full_quota.status_code == 200:  # the combined quota read, where it is served
        quota = full_quota.json()["meters"]["tokens"]
    credits = await api(client, key, "/api/v2/credits")
    assert by_agent["total"]["cost_micros"] == want["cost_micros"] > 0

    def read_page() -> dict[str, Any]:
        app = css(By.ID, "app")
        total = css(By.ID, "total-cost")
        balance = css(By.ID, "credit-balance")
        tokens = css(By.CSS_SELECTOR, ".meter[data-meter='tokens']")
        agents = {
            tr.get_attribute("data-agent"): {
                td.get_attribute("data-metric"): int(td.get_attribute("data-value"))
                for td in tr.find_elements(By.CSS_SELECTOR, "td[data-metric]")
            }
            for tr in d.find_elements(By.CSS_SELECTOR, "#agent-table tbody tr")
        }
        items = {
            (tr.get_attribute("data-line-item"), tr.get_attribute("data-item")): int(
                tr.find_element(By.CSS_SELECTOR, "td[data-metric='cost_micros']").get_attribute(
                    "data-value"
                )
            )
            for tr in d.find_elements(By.CSS_SELECTOR, "#line-item-table tbody tr")
        }
        bars = {
            rect.get_attribute("data-day"): int(rect.get_attribute("data-value"))
            for rect in d.find_elements(By.CSS_SELECTOR, "#daily-chart rect.bar")
        }
        return {
            "period": (app.get_attribute("data-from"), app.get_attribute("data-to")),
            "total": (int(total.get_attribute("data-micros")), total.text),
            "balance": (int(balance.get_attribute("data-micros")), balance.text),
            "tokens_used": int(
                tokens.find_element(By.CSS_SELECTOR, ".used").get_attribute("data-value")
            ),
            "tokens_limit": int(
                tokens.find_element(By.CSS_SELECTOR, ".limit").get_attribute("data-value")
            ),
            "tokens_text": tokens.text,
            "agents": agents,
            "agent_bars": len(d.find_elements(By.CSS_SELECTOR, "#agent-chart rect.hbar")),
            "line_bars": len(d.find_elements(By.CSS_SELECTOR, "#line-item-chart rect.hbar")),
            "items": items,
            "bars": bars,
            "banner_hidden": css(By.ID, "banner").get_attribute("hidden") is not None,
        }

    page = await in_thread(read_page)
    assert page["period"] == (period["from"], period["to"])
    assert page["total"] == (want["cost_micros"], money(want["cost_micros"]))
    assert page["balance"] == (credits["balance_micros"], money(credits["balance_micros"]))
    assert page["tokens_used"] == quota["used"] == want["tokens"]
    assert page["tokens_limit"] == quota["limit"]
    assert f"{quota['used']:,} of {quota['limit']:,}" in page["tokens_text"]
    assert "resets" in page["tokens_text"]
    api_agents = {r["group"]["agent"]: r for r in by_agent["rows"]}
    assert set(page["agents"]) == set(api_agents)
    for agent, cells in page["agents"].items():
        for metric, value in cells.items():
            assert value == api_agents[agent][metric], (agent, metric)
    assert page["agent_bars"] == len(api_agents)
    assert page["line_bars"] == len({r["group"]["line_item"] for r in by_item["rows"]})
    assert page["items"] == {
        (r["group"]["line_item"], r["group"]["item"]): r["cost_micros"] for r in by_item["rows"]
    }
    assert page["bars"] == {p["day"]: p["cost_micros"] for p in daily["days"]}
    assert page["banner_hidden"]

    # Drill down: the costliest agent, its runs, then its costliest run line by line.
    agent = max(by_agent["rows"], key=lambda r: r["cost_micros"])["group"]["agent"]
    runs = await api(client, key, f"/api/v2/usage/agents/{agent}/runs", **period)
    run_id = max(runs["runs"], key=lambda r: r["cost_micros"])["run_id"]
    run = await api(client, key, f"/api/v2/runs/{run_id}/usage")

    def drill() -> dict[str, Any]:
        css(By.CSS_SELECTOR, f"#agent-table tr[data-agent='{agent}']").click()
        ready(f"#runs[data-agent='{agent}'][data-ready='true']")
        listed = {
            tr.get_attribute("data-run"): int(
                tr.find_element(By.CSS_SELECTOR, "td[data-metric='cost_micros']").get_attribute(
                    "data-value"
                )
            )
            for tr in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
        }
        css(By.CSS_SELECTOR, f"#runs-table tr[data-run='{run_id}']").click()
        ready(f"#run[data-run='{run_id}'][data-ready='true']")
        lines = [
            (
                tr.get_attribute("data-line-item"),
                tr.get_attribute("data-item"),
                int(
                    tr.find_element(By.CSS_SELECTOR, "td[data-metric='quantity']").get_attribute(
                        "data-value"
                    )
                ),
                int(
                    tr.find_element(By.CSS_SELECTOR, "td[data-metric='cost_micros']").get_attribute(
                        "data-value"
                    )
                ),
            )
            for tr in d.find_elements(By.CSS_SELECTOR, "#run-lines tbody tr")
        ]
        total = css(By.ID, "run-total-cost")
        d.execute_script("document.getElementById('run').scrollIntoView()")
        return {
            "runs": listed,
            "lines": lines,
            "total": (int(total.get_attribute("data-micros")), total.text),
        }

    seen = await in_thread(drill)
    assert seen["runs"] == {r["run_id"]: r["cost_micros"] for r in runs["runs"]}
    assert seen["runs"] == w.runs_of(agent, window.start.date(), window.end.date())
    assert sorted(seen["lines"]) == sorted(
        (li["line_item"], li["item"], li["quantity"], li["cost_micros"]) for li in run["line_items"]
    )
    assert seen["total"] == (run["total"]["cost_micros"], money(run["total"]["cost_micros"]))
    assert run["total"]["cost_micros"] == sum(
        line["cost_micros"] for line in w.run_lines(run_id).values()
    )

    shot = screenshot_path(tmp_path, "dashboard.png")

    def save_and_reload() -> bool:
        d.execute_script("window.scrollTo(0, 0)")
        assert d.save_screenshot(str(shot))
        d.refresh()  # the key was kept: no login this time
        ready("#app[data-ready='true']")
        kept = css(By.ID, "login").get_attribute("hidden") is not None
        css(By.ID, "forget").click()
        ready("#login:not([hidden])")
        cleared = d.execute_script("return window.localStorage.getItem('tally.key')") is None
        return kept and cleared

    assert await in_thread(save_and_reload)
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")


def with_quota_document(app: Any, key: str, document: dict[str, Any]) -> Any:
    """The real app, with `GET /api/v2/quota` answered from `document`: the combined quota
    read in its published shape, so the page's meters and banners are checked against that
    contract whether or not this build serves the endpoint yet."""
    from starlette.responses import JSONResponse

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/v2/quota":
            authorized = (b"authorization", f"Bearer {key}".encode()) in scope["headers"]
            body = document if authorized else {"error": {"code": "unauthorized", "message": ""}}
            await JSONResponse(body, status_code=200 if authorized else 401)(scope, receive, send)
            return
        await app(scope, receive, send)

    return asgi


async def test_dashboard_renders_every_meter_and_the_account_banners(
    client, new_org: OrgFactory, stack, browser: Callable[[], Any], tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    org, key = await new_org(plan="pro")
    tokens = await api(client, key, "/api/v2/quota/tokens")
    now = datetime.now(UTC)
    start, end = tokens["window_start"], tokens["window_end"]

    def m(limit: int | None, used: int) -> dict[str, Any]:
        remaining = None if limit is None else max(limit - used, 0)
        return {"limit": limit, "used": used, "remaining": remaining,
                "window_start": start, "window_end": end}  # fmt: skip

    document: dict[str, Any] = {
        "org_id": org,
        "plan": "pro",
        "status": "trial",
        "trial_ends_at": (now + timedelta(days=4, hours=12)).isoformat().replace("+00:00", "Z"),
        "pending_change": {"plan": "free", "effective_at": end},
        "window_start": start,
        "window_end": end,
        "meters": {
            "tokens": tokens,
            "tool_calls": m(50_000, 41_234),
            "requests": {**m(50_000, 2_000), "minute": m(100, 7), "day": m(5_000, 321)},
            "upstream_cost_micros": m(50_000_000, 1_234_567),
            "sessions": {"limit": 25, "active": 2, "remaining": 23},
            "runs": m(10_000, 9_876),
        },
    }
    async with serve(with_quota_document(create_app(stack.services), key, document)) as base:
        d = await in_thread(browser)
        wait = WebDriverWait(d, 20)

        def open_page() -> dict[str, Any]:
            d.get(f"{base}/dashboard")
            box = wait.until(lambda drv: drv.find_element(By.ID, "key-input"))
            box.send_keys(key)
            d.find_element(By.ID, "key-submit").click()
            wait.until(lambda drv: drv.find_element(By.CSS_SELECTOR, "#app[data-ready='true']"))
            d.find_element(By.ID, "auto-refresh").click()
            meters = {}
            for el in d.find_elements(By.CSS_SELECTOR, ".meter"):
                used = el.find_element(By.CSS_SELECTOR, ".used").get_attribute("data-value")
                limit = el.find_element(By.CSS_SELECTOR, ".limit").get_attribute("data-value")
                limit = None if limit is None else int(limit)  # Pro sets no token allowance
                meters[el.get_attribute("data-meter")] = (int(used), limit, el.text)
            banner = d.find_element(By.ID, "banner")
            return {
                "meters": meters,
                "banner": (banner.get_attribute("data-status"), banner.text),
                "period": d.find_element(By.ID, "period").text,
            }

        page = await in_thread(open_page)
        assert list(page["meters"]) == [
            "tokens",
            "tool_calls",
            "requests",
            "upstream_cost_micros",
            "sessions",
            "runs",
        ]
        for name, meter in document["meters"].items():
            used = meter["active"] if name == "sessions" else meter["used"]
            assert page["meters"][name][:2] == (used, meter["limit"]), name
        assert money(1_234_567) in page["meters"]["upstream_cost_micros"][2]
        assert "this minute: 7 of 100" in page["meters"]["requests"][2]
        assert "today: 321 of 5,000" in page["meters"]["requests"][2]
        assert "2 of 25" in page["meters"]["sessions"][2]
        assert "8,766 left" in page["meters"]["tool_calls"][2]
        assert "Runs" in page["meters"]["runs"][2] and "124 left" in page["meters"]["runs"][2]
        status, text = page["banner"]
        assert status == "trial" and "Trial: 5 days left" in text
        assert "pro plan" in page["period"] and "changes to free" in page["period"]

        shot = screenshot_path(tmp_path, "dashboard-trial.png")

        def banner_after(status: str) -> tuple[str | None, str, bool]:
            document["status"] = status
            d.find_element(By.ID, "refresh").click()
            banner = d.find_element(By.ID, "banner")
            shown = None if status == "active" else status
            wait.until(lambda _: banner.get_attribute("data-status") == shown)
            return (
                banner.get_attribute("data-status"),
                banner.text,
                banner.get_attribute("hidden") is not None,
            )

        await in_thread(lambda: d.save_screenshot(str(shot)))
        status, text, hidden = await in_thread(lambda: banner_after("past_due"))
        assert status == "past_due" and "Payment past due" in text and not hidden
        status, text, hidden = await in_thread(lambda: banner_after("active"))
        assert status is None and hidden


async def test_dashboard_shows_only_what_the_key_may_see(
    client, new_org: OrgFactory, base_url: str, browser: Callable[[], Any]
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    org, _ = await new_org(plan="scale")
    body = {"mode": "live", "scopes": ["quota:read", "usage:read"]}
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json=body, headers=bearer(ADMIN_KEY))
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    d = await in_thread(browser)
    wait = WebDriverWait(d, 20)

    def open_page() -> dict[str, Any]:
        d.get(f"{base_url}/dashboard")
        wait.until(lambda drv: drv.find_element(By.ID, "key-input")).send_keys(key)
        d.find_element(By.ID, "key-submit").click()
        wait.until(lambda drv: drv.find_element(By.CSS_SELECTOR, "#app[data-ready='true']"))

        def shown(element_id: str) -> bool:
            return d.find_element(By.ID, element_id).is_displayed()

        return {
            name: shown(name)
            for name in ("quota-card", "daily-card", "spend-card", "credit-card", "scope-note")
        } | {
            "spend": d.find_element(By.ID, "total-cost").text,
            "note": d.find_element(By.ID, "scope-note").text,
            "error": d.find_element(By.ID, "load-error").is_displayed(),
        }

    page = await in_thread(open_page)
    assert page["quota-card"] and page["daily-card"] and page["spend-card"]
    assert not page["credit-card"] and not page["error"]
    assert page["spend"] == "—"  # usage:read without billing:read: no cost figures
    assert "credits" in page["note"] and "cost figures" in page["note"]


async def test_dashboard_logs_a_days_calls_and_flags_past_due_invoices(
    client, stack, send: Send, base_url: str, browser: Callable[[], Any]
):
    import uuid

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import rows_reach
    from tests.factories import make_event

    now = datetime.now(UTC)
    signup = (now - timedelta(days=40)).date()
    org = f"org-{uuid.uuid4().hex[:10]}"
    day = now.date().isoformat()
    calls = [
        make_event(
            "tool.call",
            org_id=org,
            ts=(now - timedelta(seconds=i + 1)).isoformat().replace("+00:00", "Z"),
            success=i % 10 != 0,
        )
        for i in range(60)
    ]
    await send(*calls)
    await rows_reach(stack, org, len(calls))
    # Created once its usage is stored, then its ended period closed and marked past due.
    admin = bearer(ADMIN_KEY)
    body = {"org_id": org, "plan": "developer", "signup_date": signup.isoformat()}
    assert (await client.post("/api/v2/admin/orgs", json=body, headers=admin)).status_code == 201
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=admin)
    key = r.json()["key"]
    r = await client.post("/api/v2/admin/invoices/close", params={"org_id": org}, headers=admin)
    (closed,) = r.json()["closed"]
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/invoices/{closed['id']}/status",
        json={"status": "past_due"},
        headers=admin,
    )
    assert r.status_code == 200
    upcoming = await api(client, key, "/api/v2/invoices/upcoming")
    logged = await api(client, key, "/api/v2/logs/events", type="tool.call", limit=100)
    assert [e["event_id"] for e in logged["events"]] == [e["event_id"] for e in calls]

    d = await in_thread(browser)
    wait = WebDriverWait(d, 20)

    def look() -> dict[str, Any]:
        d.get(f"{base_url}/dashboard")
        d.execute_script("window.localStorage.setItem('tally.key', arguments[0])", key)
        d.refresh()
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#invoice-table tbody tr"))
        invoices = {
            tr.get_attribute("data-invoice"): (
                tr.get_attribute("data-status"),
                "past-due" in (tr.get_attribute("class") or ""),
                int(
                    tr.find_element(
                        By.CSS_SELECTOR, "td[data-metric='total_micros']"
                    ).get_attribute("data-value")
                ),
                tr.find_element(By.CSS_SELECTOR, "td").value_of_css_property("background-color"),
            )
            for tr in d.find_elements(By.CSS_SELECTOR, "#invoice-table tbody tr")
        }
        bar = d.find_element(By.CSS_SELECTOR, f"#daily-chart rect.bar[data-day='{day}']")
        d.execute_script(
            "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", bar
        )
        wait.until(lambda drv: drv.find_element(By.ID, "logs").get_attribute("data-day") == day)
        d.find_element(By.ID, "log-type").send_keys("tool calls")
        rows = "#log-table tbody tr"
        wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, rows)) == 50)
        d.find_element(By.ID, "log-more").click()
        wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, rows)) == 60)
        return {
            "invoices": invoices,
            "title": d.find_element(By.ID, "log-title").text,
            "events": [
                tr.get_attribute("data-event") for tr in d.find_elements(By.CSS_SELECTOR, rows)
            ],
            "billed": [
                td.text for td in d.find_elements(By.CSS_SELECTOR, f"{rows} td[data-billed]")
            ],
            "more_hidden": d.find_element(By.ID, "log-more").get_attribute("hidden") is not None,
        }

    page = await in_thread(look)
    assert page["invoices"]["upcoming"][:3] == ("upcoming", False, upcoming["total_micros"])
    status, flagged, total, colour = page["invoices"][closed["id"]]
    assert (status, flagged, total) == ("past_due", True, closed["total_micros"])
    assert colour == "rgba(253, 228, 228, 1)"  # the page's red
    assert page["title"] == f"Calls on {day}"
    assert page["events"] == [e["event_id"] for e in calls]
    assert page["billed"].count("not billed: failed") == 6
    assert page["more_hidden"]
