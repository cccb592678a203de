"""Credits: top-ups applied once per key, the balance debited exactly by live usage."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx

from schemas.events import parse_event
from streams.decode import flatten
from tally.catalogue import load_prices
from tally.domain.pricing import Pricer
from tally.domain.usage import measure
from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually
from tests.factories import make_event, wire

ADMIN = bearer(ADMIN_KEY)


async def top_up(
    client: httpx.AsyncClient, org: str, key: str, amount: int, note: str = ""
) -> httpx.Response:
    body = {"amount_micros": amount, "idempotency_key": key, "note": note}
    return await client.post(f"/api/v2/admin/orgs/{org}/credits", json=body, headers=ADMIN)


async def credits(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    r = await client.get("/api/v2/credits", headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def cost(*events: dict[str, Any]) -> int:
    pricer = Pricer(load_prices(None))
    return sum(measure(flatten(parse_event(wire(e))), pricer).cost_micros for e in events)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_a_new_account_is_empty(client, new_org: OrgFactory):
    org, key = await new_org()
    assert await credits(client, key) == {
        "org_id": org,
        "balance_micros": 0,
        "topped_up_micros": 0,
        "spent_micros": 0,
        "started_at": None,
        "history": [],
    }


async def test_a_retried_or_raced_top_up_is_applied_once(client, new_org: OrgFactory):
    org, key = await new_org()
    first = await top_up(client, org, "invoice-1", 10_000_000, "welcome credits")
    assert first.status_code == 201, first.text
    assert first.json()["replayed"] is False
    assert first.json()["balance_micros"] == 10_000_000
    again = await top_up(client, org, "invoice-1", 10_000_000, "welcome credits")
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["created_at"] == first.json()["created_at"]

    raced = await asyncio.gather(*(top_up(client, org, "invoice-2", 2_500_000) for _ in range(6)))
    assert sorted(r.status_code for r in raced) == [200] * 5 + [201]
    assert len({r.json()["created_at"] for r in raced}) == 1

    clash = await top_up(client, org, "invoice-2", 9_999)
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "idempotency_key_reused"

    body = await credits(client, key)
    assert body["topped_up_micros"] == body["balance_micros"] == 12_500_000
    assert [(e["kind"], e["idempotency_key"], e["amount_micros"]) for e in body["history"]] == [
        ("topup", "invoice-1", 10_000_000),
        ("topup", "invoice-2", 2_500_000),
    ]
    assert [e["balance_micros"] for e in body["history"]] == [10_000_000, 12_500_000]


async def test_live_usage_since_the_first_top_up_is_debited_exactly(
    client, new_org: OrgFactory, send: Send
):
    org, key = await new_org()
    opened = (await top_up(client, org, "t1", 50_000_000)).json()
    started = datetime.fromisoformat(opened["created_at"].replace("Z", "+00:00"))

    def llm(ts: datetime, **kw: Any) -> dict[str, Any]:
        base = {"org_id": org, "ts": iso(ts), "input_tokens": 12_345, "output_tokens": 678}
        return make_event(**{**base, **kw})

    debited = [
        llm(started),  # the opening millisecond counts
        llm(started + timedelta(seconds=1), model="claude-sonnet-4", cached_input_tokens=345),
        make_event("tool.call", org_id=org, ts=iso(started + timedelta(seconds=2))),
        # (Not a day later, as a split over days would need: the worker refuses a ts more
        # than 5 minutes ahead. tests/unit/test_credits.py splits usage over days.)
        make_event(
            "storage.usage",
            org_id=org,
            ts=iso(started + timedelta(seconds=2, milliseconds=500)),
            byte_seconds=10**12,
        ),
    ]
    free = [
        llm(started - timedelta(milliseconds=1)),  # before the account opened
        llm(started - timedelta(days=3)),
        llm(started + timedelta(seconds=3), key_mode="test"),
        make_event("tool.call", org_id=org, ts=iso(started + timedelta(seconds=4)), success=False),
    ]
    marker = llm(started + timedelta(seconds=5), input_tokens=1, output_tokens=0)
    await send(*debited, *free)
    await send(*debited)  # replayed by the producer: stored once, debited once
    await send(marker)
    spent = cost(*debited, marker)
    assert spent > 0 and cost(*free[:2]) > 0

    async def debited_now() -> dict[str, Any] | None:
        body = await credits(client, key)
        return body if body["spent_micros"] == spent else None

    body = await eventually(debited_now)
    assert body["balance_micros"] == 50_000_000 - spent
    assert body["started_at"] == opened["created_at"]
    usage = [e for e in body["history"] if e["kind"] == "usage"]
    by_day: dict[str, int] = {}  # one day, or two if the test runs across midnight
    for e in (*debited, marker):
        day = datetime.fromisoformat(e["ts"]).date().isoformat()
        by_day[day] = by_day.get(day, 0) + cost(e)
    assert cost(debited[3]) > 0
    assert {e["day"]: -e["amount_micros"] for e in usage} == by_day
    assert body["history"][0]["kind"] == "topup"
    assert body["history"][-1]["balance_micros"] == body["balance_micros"]

    second = await top_up(client, org, "t2", 1_000_000)
    assert second.json()["balance_micros"] == 51_000_000 - spent
    after = await credits(client, key)
    assert after["started_at"] == opened["created_at"]  # the account opened with t1
    assert after["balance_micros"] == 51_000_000 - spent


async def test_credits_are_per_org_and_top_ups_need_the_admin_key(client, new_org: OrgFactory):
    org_a, key_a = await new_org()
    org_b, key_b = await new_org()
    assert (await top_up(client, org_a, "shared-key", 3_000_000)).status_code == 201
    # The same idempotency key in another org is another top-up.
    assert (await top_up(client, org_b, "shared-key", 4_000_000)).status_code == 201
    assert (await credits(client, key_a))["balance_micros"] == 3_000_000
    assert (await credits(client, key_b))["balance_micros"] == 4_000_000

    body = {"amount_micros": 1, "idempotency_key": "sneaky"}
    r = await client.post(f"/api/v2/admin/orgs/{org_a}/credits", json=body, headers=bearer(key_a))
    assert r.status_code == 401
    r = await client.post("/api/v2/admin/orgs/no-such-org/credits", json=body, headers=ADMIN)
    assert r.status_code == 404
    for bad in ({"amount_micros": 0, "idempotency_key": "k"}, {"amount_micros": 5}):
        r = await client.post(f"/api/v2/admin/orgs/{org_a}/credits", json=bad, headers=ADMIN)
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "invalid_request"
    assert (await client.get("/api/v2/credits")).status_code == 401
    assert (await credits(client, key_a))["balance_micros"] == 3_000_000
