"""The runs meter against the real broker and chDB: a live run counts once per billing
window, at its first live event in it; the cap is checked before a run starts."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api import figures
from producers import Emitter
from tally.domain.windows import monthly_window
from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually, rows_reach
from tests.factories import make_event
from tests.integration.test_crash_embedded import Up

ADMIN = bearer(ADMIN_KEY)


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def runs_quota(client: httpx.AsyncClient, key: str) -> dict:
    r = await client.get("/api/v2/quota/runs", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def runs_used(client: httpx.AsyncClient, key: str, expected: int) -> bool:
    return (await runs_quota(client, key))["used"] == expected


async def check(client: httpx.AsyncClient, key: str, **body) -> httpx.Response:
    return await client.post(
        "/api/v2/quota/check", json={"meter": "runs", **body}, headers=bearer(key)
    )


async def test_five_runs_of_several_events_count_five_and_a_resent_event_none(
    client, new_org: OrgFactory, send: Send, stack
):
    org, key = await new_org("free")
    events = [
        make_event(kind, org_id=org, run_id=f"run-{r}", session_id=f"s-{r}")
        for r in range(5)
        for kind in ("session.started", "llm.usage", "tool.call", "llm.usage", "session.ended")
    ]
    free = [
        make_event(org_id=org, run_id="run-test", key_mode="test"),  # test keys are free
        make_event(org_id=org, run_id=None),  # no run
    ]
    await send(*events, *free)
    await eventually(lambda: runs_used(client, key, 5))
    await rows_reach(stack, org, len(events) + len(free))

    # A producer retry (the same event again) and a new event of a counted run: no new run.
    await send(events[7], make_event("tool.call", org_id=org, run_id="run-3"))
    await rows_reach(stack, org, len(events) + len(free) + 1)
    q = await runs_quota(client, key)
    assert (q["limit"], q["used"], q["remaining"]) == (500, 5, 495)
    assert set(q) == {"limit", "used", "remaining", "window_start", "window_end"}
    r = await client.get("/api/v2/quota", headers=bearer(key))
    assert r.json()["meters"]["runs"] == q
    assert r.json()["window_start"] == q["window_start"]


async def test_a_run_whose_first_event_is_late_counts_in_its_own_window(
    client, new_org: OrgFactory, send: Send, stack
):
    today = datetime.now(UTC).date()
    signup = today - timedelta(days=3)
    org, key = await new_org("free", signup_date=signup)
    start = datetime.fromisoformat((await runs_quota(client, key))["window_start"])
    current = monthly_window(signup.day, start)
    before = monthly_window(signup.day, start - timedelta(seconds=1))
    now = datetime.now(UTC)
    late = stamp(start - timedelta(days=10))  # in the window before, within the 35-day horizon

    async def used_in(window) -> int | None:
        return figures.runs(stack.services.counters, org, window)

    await send(
        make_event(org_id=org, run_id="a", ts=late),  # only ever in the window before
        make_event(org_id=org, run_id="b", ts=stamp(now)),
        make_event(org_id=org, run_id="c", ts=stamp(start + timedelta(hours=1))),
        make_event(org_id=org, run_id="c", ts=stamp(now)),
    )
    await eventually(lambda: runs_used(client, key, 2))  # b and c
    await rows_reach(stack, org, 4)
    # b's first event in the window before arrives after its event now: b counts there too.
    await send(make_event(org_id=org, run_id="b", ts=late))
    await rows_reach(stack, org, 5)

    async def settled() -> tuple[int | None, int | None]:
        return await used_in(before), await used_in(current)

    assert await eventually(lambda: _equal(settled, (2, 2))) == (2, 2)  # a, b; b, c
    assert (await runs_quota(client, key))["used"] == 2


async def _equal(read, expected):
    got = await read()
    return got if got == expected else None


async def test_an_enterprise_org_with_five_runs_is_refused_the_sixth(
    client, new_org: OrgFactory, stack, tmp_path: Path
):
    """As a new user would: a cap of 5 runs, 5 runs started through the emitter."""
    org, key = await new_org("enterprise")
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/overrides", json={"runs_per_month": 5}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "test"}, headers=ADMIN)
    test_key = r.json()["key"]
    assert (await check(client, key, run_id="run-0")).status_code == 200

    async with Emitter(stack.settings.bootstrap_servers, spool_dir=tmp_path) as emitter:
        for n in range(5):
            run = {"org_id": org, "agent_id": "a1", "run_id": f"run-{n}"}
            emitter.llm_usage(**run, model="gpt-4o-mini", input_tokens=100, output_tokens=10)
            emitter.tool_call(**run, connector="github", tool="create_issue", success=True)
        assert await emitter.wait_stored(60), emitter.stats()
    await eventually(lambda: runs_used(client, key, 5))
    q = await runs_quota(client, key)
    assert (q["limit"], q["used"], q["remaining"]) == (5, 5, 0)

    r = await check(client, key, run_id="run-5")
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "billing_limit_reached"
    assert "5 of 5" in error["message"] and "upgrade" in error["message"]
    assert (await check(client, key)).json()["error"]["code"] == "billing_limit_reached"
    # A run already counted this period goes on; a test key never counts.
    r = await check(client, key, run_id="run-2")
    assert r.status_code == 200, r.text
    assert (r.json()["used"], r.json()["limit"]) == (5, 5)
    assert (await check(client, test_key, run_id="run-9")).status_code == 200
    # Lifting the cap lets the sixth start.
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/overrides", json={"runs_per_month": 6}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert (await check(client, key, run_id="run-5")).status_code == 200


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="known stall, open in issue 18: after a SIGKILL and restart of tally up, the emitter"
    " sometimes holds its re-sent spooled events unconfirmed for good (wait_stored times out,"
    " e.g. unconfirmed=75 of 75 re-sent); seen once in a fresh-clone CI run, and in early"
    " versions of this test; cause not found yet",
)
async def test_the_runs_count_survives_a_sigkill_of_tally_up(tmp_path: Path):
    up = Up(tmp_path)
    up.start()
    try:
        async with httpx.AsyncClient(base_url=up.base, timeout=30) as client:
            await up.ready(client)
            r = await client.post(
                "/api/v2/admin/orgs",
                headers=ADMIN,
                json={
                    "org_id": "acme",
                    "plan": "free",
                    "signup_date": date(2026, 1, 1).isoformat(),
                },
            )
            assert r.status_code == 201, r.text
            r = await client.post(
                "/api/v2/admin/orgs/acme/keys", headers=ADMIN, json={"mode": "live"}
            )
            key = r.json()["key"]
            async with Emitter(up.broker, spool_dir=tmp_path / "spool") as emitter:

                def runs(first: int, last: int) -> None:
                    for n in range(first, last):
                        for _ in range(3):
                            emitter.llm_usage(
                                org_id="acme", agent_id="a1", run_id=f"run-{n}",
                                model="gpt-4o", input_tokens=10, output_tokens=1,
                            )  # fmt: skip

                runs(0, 20)
                assert await emitter.wait_stored(60), emitter.stats()
                runs(20, 40)
                runs(5, 10)  # more events of counted runs
                await asyncio.sleep(0.05)  # acknowledged by the broker, not all stored yet
                up.kill()  # with events in flight, unconfirmed
                up.start()
                await up.ready(client)
                assert await emitter.wait_stored(180), emitter.stats()
                assert emitter.stats().resent > 0, "the kill caught no event in flight"
                await eventually(lambda: runs_used(client, key, 40), timeout=30)
                up.kill()  # everything stored: what comes back is rebuilt from the store
                up.start()
                await up.ready(client)
                await eventually(lambda: runs_used(client, key, 40), timeout=30)
                # After the rebuild a counted run is still known, and a new one counts.
                emitter.tool_call(
                    org_id="acme",
                    agent_id="a1",
                    run_id="run-7",
                    connector="github",
                    tool="t",
                    success=True,
                )
                emitter.tool_call(
                    org_id="acme",
                    agent_id="a1",
                    run_id="run-40",
                    connector="github",
                    tool="t",
                    success=True,
                )
                assert await emitter.wait_stored(60), emitter.stats()
            await eventually(lambda: runs_used(client, key, 41), timeout=30)
            await asyncio.sleep(1)
            assert (await runs_quota(client, key))["used"] == 41
            assert up.stop() == 0
    finally:
        up.kill()
