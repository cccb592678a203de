"""The invoice book: closes billing periods into invoices, reads them, sets their status.

The rules are in `tally.domain.invoices`; this module reads what they need (the org's plan
changes from the registry, its usage from the rollups, its top-ups) and stores the result.
Every API replica runs an `InvoiceCloser`; closes of one period that race each other all
land in the store and every read takes the first (migrations/013_invoices.sql), so each
org has exactly one invoice per closed period whatever the number of replicas.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from api.background import Background
from api.ledger import CreditLedger
from api.state import Services
from api.subscriptions import now_ms
from schemas.invoices import Invoice, InvoiceBody, InvoiceLine, InvoiceStatus
from tally.domain import invoices as rules
from tally.domain import reports
from tally.domain.invoices import ItemKey, Line, Metered, Period
from tally.domain.reports import DayRange
from tally.domain.subscriptions import initial
from tally.store import invoices as sql
from tally.store import reports as report_sql

log = logging.getLogger("tally.invoices")

UPCOMING = "upcoming"


class InvoiceBook:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.store = svc.store

    async def stored(self, org_id: str) -> list[InvoiceBody]:
        """The org's invoices, oldest period first."""
        rows = await self.store.query(*sql.stored(org_id))
        return [InvoiceBody.model_validate_json(body) for _, body, _ in rows]

    async def all(self, org_id: str) -> list[Invoice]:
        """The org's invoices with their status, newest period first."""
        bodies = await self.stored(org_id)
        status = dict(await self.store.query(*sql.statuses(org_id)))
        return [
            Invoice(**b.model_dump(), status=status.get(b.id, "open")) for b in reversed(bodies)
        ]

    async def get(self, org_id: str, invoice_id: str) -> Invoice | None:
        return next((i for i in await self.all(org_id) if i.id == invoice_id), None)

    async def set_status(self, org_id: str, invoice_id: str, status: InvoiceStatus) -> None:
        row = [org_id, invoice_id, status, now_ms(), uuid.uuid4().hex]
        await self.store.insert("invoice_status", [row], sql.STATUS_COLUMNS)

    async def upcoming(self, org_id: str, now: datetime | None = None) -> Invoice:
        """The period in progress as its invoice would be if it closed now."""
        now = now or datetime.now(UTC)
        _, current = self._periods(org_id, now)
        stored = await self.stored(org_id)
        (draft,) = await self._make(org_id, [current], stored, now)
        return Invoice(**_body(draft, UPCOMING, None).model_dump(), status=UPCOMING)

    async def close(
        self, now: datetime | None = None, org_ids: Sequence[str] = ()
    ) -> dict[str, list[str]]:
        """Invoice every closed period not invoiced yet (of `org_ids`, or of every org);
        returns the ids of the invoices made, by org."""
        now = now or datetime.now(UTC)
        latest = dict(await self.store.query(*sql.latest_periods()))
        made: dict[str, list[str]] = {}
        for org_id in org_ids or list(self.svc.registry.orgs):
            closed, _ = self._periods(org_id, now)
            last = latest.get(org_id)
            due = [p for p in closed if last is None or p.start > _utc(last)]
            ids = await self._close(org_id, due, now) if due else []
            if ids:
                made[org_id] = ids
        return made

    async def _close(self, org_id: str, due: list[Period], now: datetime) -> list[str]:
        stored = await self.stored(org_id)
        have = {b.period_start for b in stored}
        due = [p for p in due if p.start not in have]  # another replica was quicker
        if not due:
            return []
        made = await self._make(org_id, due, stored, now)
        request_id, created = uuid.uuid4().hex, now_ms()
        bodies = [_body(inv, rules.invoice_id(org_id, inv.period), created) for inv in made]
        rows = [
            [org_id, b.period_start, b.id, request_id, created, b.model_dump_json()] for b in bodies
        ]
        await self.store.insert("invoices", rows, sql.COLUMNS)
        ids = [b.id for b in bodies]
        log.info("invoiced %d periods", len(ids), extra={"org": org_id})
        return ids

    async def _make(
        self, org_id: str, periods: list[Period], stored: list[InvoiceBody], now: datetime
    ) -> list[rules.Invoice]:
        """The invoices of `periods` (in order), each after those before it."""
        org = self.svc.registry.orgs[org_id]
        start = initial(org.plan, org.signup_date)
        changes = self.svc.registry.accounts.history(org_id)
        earlier = [_domain(b) for b in stored]
        first = min([p.start for p in periods] + [i.period.start for i in earlier])
        usage = await self._usage(org_id, first.date(), now)
        topped_up = sum(
            t.amount_micros
            for t in await CreditLedger(self.store, self.svc.topup_lock).topups(org_id)
            if t.at <= now
        )
        out = []
        for period in periods:
            plan, lines = rules.plan_lines(start, changes, self.svc.plans, period)
            lines += rules.usage_lines(_within(usage, period))
            for inv in earlier:
                if inv.period.start < period.start:
                    billed = rules.billed_for(inv.period, earlier)
                    lines += rules.adjustment_lines(inv.period, _within(usage, inv.period), billed)
            applied = sum(i.credits_applied_micros for i in earlier)
            draft = rules.Invoice(org_id, period, plan, tuple(lines), 0)
            credits = rules.credits_to_apply(topped_up, applied, draft.usage_micros)
            inv = rules.Invoice(org_id, period, plan, tuple(lines), credits)
            out.append(inv)
            earlier.append(inv)
        return out

    async def _usage(
        self, org_id: str, first: date, now: datetime
    ) -> dict[date, dict[ItemKey, Metered]]:
        """Live usage per day and (line item, item) from `first` to now: the breakdown."""
        span = DayRange(first, max(now.date(), first) + _DAY)
        groups = ("day", "line_item", "item")
        rows = await self.store.query(
            *report_sql.breakdown(org_id, span, groups, reports.KEY_MODES["live"])
        )
        out: dict[date, dict[ItemKey, Metered]] = {}
        for values, figures in reports.split_rows(groups, rows)[0]:
            day, line_item, item = values
            assert isinstance(day, date)
            quantity = _quantity(str(line_item), figures)
            out.setdefault(day, {})[(str(line_item), str(item))] = Metered(
                quantity, figures["cost_micros"]
            )
        return out

    def _periods(self, org_id: str, now: datetime) -> tuple[list[Period], Period]:
        org = self.svc.registry.orgs[org_id]
        changes = self.svc.registry.accounts.history(org_id)
        first = datetime.combine(org.signup_date, time(), UTC)
        return rules.periods(initial(org.plan, org.signup_date), changes, first, now)


class InvoiceCloser(Background):
    """Closes the periods that have ended, every `interval_s`."""

    name = "tally-invoices"

    def __init__(self, book: InvoiceBook, interval_s: float) -> None:
        self.book = book
        self.interval_s = interval_s
        super().__init__()

    async def _run(self) -> None:
        while True:
            try:
                made = await self.book.close()
                if made:
                    log.info("closed %d invoices", sum(map(len, made.values())))
            except Exception as exc:  # the store may be down: try again next time
                log.warning("closing invoices failed: %s", exc)
            await asyncio.sleep(self.interval_s)


def _quantity(line_item: str, figures: dict[str, int]) -> int:
    return {
        "llm": figures["tokens"],
        "tool_calls": figures["billable_tool_calls"],
        "requests": figures["requests"],
        "storage": figures["storage_byte_seconds"],
    }.get(line_item, figures["events"])


def _within(usage: dict[date, dict[ItemKey, Metered]], period: Period) -> dict[ItemKey, Metered]:
    out: dict[ItemKey, Metered] = {}
    for day, items in usage.items():
        if period.start.date() <= day < period.end.date():
            for key, m in items.items():
                was = out.get(key, Metered(0, 0))
                out[key] = Metered(was.quantity + m.quantity, was.cost_micros + m.cost_micros)
    return out


def _body(inv: rules.Invoice, invoice_id: str, issued_at: datetime | None) -> InvoiceBody:
    return InvoiceBody(
        id=invoice_id,
        org_id=inv.org_id,
        period_start=inv.period.start,
        period_end=inv.period.end,
        issued_at=issued_at,
        plan=inv.plan,
        lines=[InvoiceLine(**_fields(line)) for line in inv.lines],
        subtotal_micros=inv.subtotal_micros,
        credits_applied_micros=inv.credits_applied_micros,
        total_micros=inv.total_micros,
    )


def _fields(line: Line) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "description": line.description,
        "line_item": line.line_item,
        "item": line.item,
        "quantity": line.quantity,
        "amount_micros": line.amount_micros,
        "period_start": line.period_start,
    }


def _domain(body: InvoiceBody) -> rules.Invoice:
    lines = tuple(
        Line(
            x.kind,
            x.description,
            x.amount_micros,
            x.line_item,
            x.item,
            x.quantity,
            _utc(x.period_start) if x.period_start else None,
        )
        for x in body.lines
    )
    period = Period(_utc(body.period_start), _utc(body.period_end))
    return rules.Invoice(body.org_id, period, body.plan, lines, body.credits_applied_micros)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


_DAY = timedelta(days=1)
