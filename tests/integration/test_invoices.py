"""Invoices over the real broker and chDB: closed periods, late events, files, status."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from api.invoice_files import units
from api.invoicing import InvoiceBook
from tally.domain.windows import monthly_window
from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, rows_reach
from tests.factories import make_event
from tests.integration.ops import serve, tally

ADMIN = bearer(ADMIN_KEY)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def breakdown(client: httpx.AsyncClient, key: str, start: str, end: str) -> dict[str, Any]:
    r = await client.get(
        "/api/v2/usage/breakdown",
        params={"from": start[:10], "to": end[:10], "group_by": "line_item,item"},
        headers=bearer(key),
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def usage(invoice: dict[str, Any], kind: str = "usage") -> dict[tuple[str, str], int]:
    return {
        (x["line_item"], x["item"]): x["amount_micros"]
        for x in invoice["lines"]
        if x["kind"] == kind
    }


async def create_org(client: httpx.AsyncClient, org: str, plan: str, signup: date) -> str:
    """The org, created after its usage was stored: whenever the background closer runs,
    it cannot invoice the period before the usage is in."""
    body = {"org_id": org, "plan": plan, "signup_date": signup.isoformat()}
    r = await client.post("/api/v2/admin/orgs", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={"mode": "live"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


async def test_closed_period_invoice_late_event_files_and_status(
    client, stack, new_org: OrgFactory, send: Send
):
    now = datetime.now(UTC)
    signup = (now - timedelta(days=70)).date()
    org = f"org-{uuid.uuid4().hex[:10]}"
    # The current window starts at `w`: the two periods before it are closed, and 12 hours
    # before `w` lies within the second (and within the worker's event-time horizon).
    w = monthly_window(signup.day, now).start
    closed_at = w - timedelta(hours=12)
    before = [
        make_event(org_id=org, ts=iso(closed_at), input_tokens=40_000, output_tokens=2_000),
        make_event(org_id=org, ts=iso(closed_at), model="gpt-4o-mini", input_tokens=9_000),
        make_event("tool.call", org_id=org, ts=iso(closed_at), connector="slack"),
        make_event("tool.call", org_id=org, ts=iso(closed_at), success=False),
        make_event("tool.call", org_id=org, ts=iso(closed_at), key_mode="test"),
        make_event("storage.usage", org_id=org, ts=iso(closed_at), byte_seconds=10**14),
    ]
    current = [make_event(org_id=org, input_tokens=1_000, output_tokens=100)]
    await send(*before, *current)
    await rows_reach(stack, org, len(before) + len(current))
    key = await create_org(client, org, "developer", signup)
    other, other_key = await new_org()

    # Two replicas closing at once: one invoice per period all the same.
    assert stack.services is not None
    books = [InvoiceBook(stack.services), InvoiceBook(stack.services)]
    await asyncio.gather(*(b.close(org_ids=[org]) for b in books))
    r = await client.post("/api/v2/admin/invoices/close", params={"org_id": org}, headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"closed": []}  # nothing left to close

    listed = (await client.get("/api/v2/invoices", headers=bearer(key))).json()["invoices"]
    starts = [i["period_start"] for i in listed]
    assert len(starts) == len(set(starts)) == 2  # two periods closed since signup
    last = listed[0]
    assert last["period_end"] == iso(w).replace(".000Z", "Z")
    assert last["status"] == "open" and last["plan"] == "developer"

    # The invoice is the breakdown of its period: line by line and in total.
    report = await breakdown(client, key, last["period_start"], last["period_end"])
    expected = {
        (row["group"]["line_item"], row["group"]["item"]): row["cost_micros"]
        for row in report["rows"]
    }
    assert usage(last) == expected
    spent = report["total"]["cost_micros"]
    assert spent > 0
    assert [(x["kind"], x["amount_micros"]) for x in last["lines"] if x["kind"] == "plan"] == [
        ("plan", 29_000_000)
    ]
    assert last["credits_applied_micros"] == 0
    assert last["total_micros"] == last["subtotal_micros"] == 29_000_000 + spent
    first = listed[1]
    assert usage(first) == {}
    assert first["total_micros"] == 29_000_000  # created on a paid plan: billed from signup

    # Prepaid credits, then a late event for the closed period: the invoice stays, the
    # next one adjusts, and the credits pay for usage on it.
    r = await client.post(
        f"/api/v2/admin/orgs/{org}/credits",
        json={"amount_micros": 100_000, "idempotency_key": "prepaid"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    late = make_event(org_id=org, ts=iso(closed_at + timedelta(hours=1)), input_tokens=77_000)
    await send(late)
    await rows_reach(stack, org, len(before) + len(current) + 1)
    again = await client.get(f"/api/v2/invoices/{last['id']}", headers=bearer(key))
    assert again.json() == last
    after = await breakdown(client, key, last["period_start"], last["period_end"])
    late_cost = after["total"]["cost_micros"] - spent
    assert late_cost > 0
    upcoming = (await client.get("/api/v2/invoices/upcoming", headers=bearer(key))).json()
    adjustments = [x for x in upcoming["lines"] if x["kind"] == "adjustment"]
    assert [(x["item"], x["amount_micros"], x["period_start"]) for x in adjustments] == [
        ("gpt-4o", late_cost, last["period_start"])
    ]
    # The upcoming invoice's usage is the current period's spend.
    now_report = await breakdown(client, key, upcoming["period_start"], upcoming["period_end"])
    assert sum(usage(upcoming).values()) == now_report["total"]["cost_micros"] > 0
    assert upcoming["status"] == "upcoming" and upcoming["credits_applied_micros"] == 100_000
    assert upcoming["total_micros"] == (
        29_000_000 + now_report["total"]["cost_micros"] + late_cost - 100_000
    )

    # CSV: the lines and the total, in micro-units.
    r = await client.get(f"/api/v2/invoices/{last['id']}/csv", headers=bearer(key))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[-1] == ["total", "", "", "", "", str(last["total_micros"])]

    # Status: set by the admin, seen by the org; the content never changes.
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/invoices/{last['id']}/status",
        json={"status": "past_due"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    got = (await client.get(f"/api/v2/invoices/{last['id']}", headers=bearer(key))).json()
    assert got == {**last, "status": "past_due"}
    listed_by_admin = await client.get(f"/api/v2/admin/orgs/{org}/invoices", headers=ADMIN)
    assert listed_by_admin.json()["invoices"][0] == got
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/invoices/{last['id']}/status",
        json={"status": "overdue"},
        headers=ADMIN,
    )
    assert r.status_code == 422

    # No other org reads it.
    r = await client.get(f"/api/v2/invoices/{last['id']}", headers=bearer(other_key))
    assert r.status_code == 404
    theirs = (await client.get("/api/v2/invoices", headers=bearer(other_key))).json()
    assert {i["org_id"] for i in theirs["invoices"]} <= {other}


async def test_the_pdf_renders_and_a_reader_finds_the_total(client, stack, send: Send):
    signup = (datetime.now(UTC) - timedelta(days=40)).date()
    org = f"org-{uuid.uuid4().hex[:10]}"
    await send(make_event(org_id=org, input_tokens=123_456, output_tokens=7_890))
    await rows_reach(stack, org, 1)
    key = await create_org(client, org, "developer", signup)
    async with serve(stack) as url:  # an operator's `tally invoices close`
        run = await tally("invoices", "close", "--org", org, "--api-url", url)
        assert run.code == 0, run.err
        assert run.out.strip().endswith("1 invoice made")
        again = await tally("invoices", "close", "--org", org, "--api-url", url)
        assert again.out.strip() == "0 invoices made"
    (newest,) = (await client.get("/api/v2/invoices", headers=bearer(key))).json()["invoices"]
    assert newest["id"] in run.out
    for path, total in (
        (f"/api/v2/invoices/{newest['id']}/pdf", newest["total_micros"]),
        ("/api/v2/invoices/upcoming/pdf", None),
    ):
        r = await client.get(path, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/pdf"
        assert r.content.startswith(b"%PDF-")
        read = await asyncio.to_thread(
            subprocess.run,
            ["pdftotext", "-layout", "-", "-"],
            input=r.content,
            capture_output=True,
            check=True,
        )
        text = read.stdout.decode()
        if total is None:
            upcoming = (await client.get("/api/v2/invoices/upcoming", headers=bearer(key))).json()
            total = upcoming["total_micros"]
            assert "Upcoming invoice" in text
        assert total > 29_000_000 - 1 and f"Total {units(total)}".replace(" ", "") in (
            text.replace(" ", "")
        )


async def test_an_upgrade_mid_period_is_charged_prorated_on_the_upcoming_invoice(
    client, new_org: OrgFactory
):
    now = datetime.now(UTC)
    org, key = await new_org(plan="free", signup_date=(now - timedelta(days=40)).date())
    r = await client.put(
        f"/api/v2/admin/orgs/{org}/subscription", json={"plan": "developer"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    upgraded = datetime.now(UTC)
    upcoming = (await client.get("/api/v2/invoices/upcoming", headers=bearer(key))).json()
    # The paid plan's billing date is today: the period starts at midnight, on Free, and the
    # upgrade is charged for what is left of it.
    start = datetime.fromisoformat(upcoming["period_start"])
    end = datetime.fromisoformat(upcoming["period_end"])
    assert start == datetime.combine(upgraded.date(), datetime.min.time(), UTC)
    assert upcoming["plan"] == "free"
    (line,) = [x for x in upcoming["lines"] if x["kind"] in ("plan", "proration")]
    assert line["kind"] == "proration"
    ms = timedelta(milliseconds=1)
    most = 29_000_000 * ((end - now) // ms) // ((end - start) // ms)
    least = 29_000_000 * ((end - upgraded) // ms) // ((end - start) // ms)
    assert least <= line["amount_micros"] <= most
    assert upcoming["total_micros"] == line["amount_micros"]  # no usage yet
    # Closing now invoices the free periods before the upgrade, at no plan charge.
    r = await client.post("/api/v2/admin/invoices/close", params={"org_id": org}, headers=ADMIN)
    closed = r.json()["closed"]
    assert closed and all(i["total_micros"] == 0 and i["plan"] == "free" for i in closed)
    assert max(i["period_end"] for i in closed) == upcoming["period_start"]
