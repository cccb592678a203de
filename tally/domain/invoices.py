"""Invoices: billing periods, plan charges with proration, metered lines, adjustments,
credits and totals, in integer micro-units. No I/O.

- Periods. An org's billing periods follow its billing window from the signup day on. A
  change of billing anchor (a signup-anchored plan upgraded to a billing-date one) ends the
  period at midnight of the day the new anchor starts, so that every period is whole UTC
  days, as the usage rollups are.
- Plan charges. The plan in force when the period starts is charged its monthly price. An
  upgrade during the period is charged the difference of the two prices for the remainder of
  the period, pro rata to the millisecond and rounded down (the seed: "charged the prorated
  difference for the remainder of the current cycle"). Downgrades and cancellations take
  effect at the period's end, so they change the next period's plan charge. A plan with no
  published price (`null`) is charged nothing here: its price is the contract's.
- Metered lines: the period's live usage per line item and item (LLM by model, tool calls by
  connector, storage by kind), exactly the usage breakdown of the period.
- Adjustments: a closed invoice never changes. What reached an earlier period after its
  invoice was made (late events, corrections) is the difference between that period's usage
  now and what its invoice and later adjustments billed; it goes on the next invoice made.
- Credits: the prepaid balance (every top-up, less what earlier invoices applied) pays for
  usage charges (metered and adjustments), never for more than they come to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from schemas.plans import Catalogue
from tally.domain.subscriptions import Change, Subscription, state_at, state_until

# Line items that are always listed (at zero cost too); any other is listed when it costs.
METERED = ("llm", "tool_calls", "storage")
STATUSES = ("open", "paid", "past_due", "void")

Kind = Literal["plan", "proration", "usage", "adjustment"]
Status = Literal["open", "paid", "past_due", "void"]
ItemKey = tuple[str, str]  # (line_item, item)


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Metered:
    """One line item and item over a period: quantity and cost."""

    quantity: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Line:
    kind: Kind
    description: str
    amount_micros: int
    line_item: str = ""
    item: str = ""
    quantity: int = 0
    period_start: datetime | None = None  # adjustments: the period they correct


@dataclass(frozen=True, slots=True)
class Invoice:
    org_id: str
    period: Period
    plan: str
    lines: tuple[Line, ...]
    credits_applied_micros: int
    subtotal_micros: int = field(init=False)
    total_micros: int = field(init=False)

    def __post_init__(self) -> None:
        subtotal = sum(line.amount_micros for line in self.lines)
        object.__setattr__(self, "subtotal_micros", subtotal)
        object.__setattr__(self, "total_micros", subtotal - self.credits_applied_micros)

    @property
    def usage_micros(self) -> int:
        return sum(x.amount_micros for x in self.lines if x.kind in ("usage", "adjustment"))


def invoice_id(org_id: str, period: Period) -> str:
    """The same id wherever and however often the invoice is made."""
    digest = hashlib.sha256(f"{org_id}|{period.start.isoformat()}".encode()).hexdigest()
    return f"inv_{digest[:20]}"


def periods(
    start: Subscription, changes: Sequence[Change], first: datetime, until: datetime
) -> tuple[list[Period], Period]:
    """The org's billing periods from `first` (its signup, midnight UTC): those ended by
    `until`, and the one in progress at `until`."""
    closed: list[Period] = []
    t = first
    while True:
        s, later = state_until(start, changes, t)
        end = s.window(t).end
        while later is not None and later < end:
            moved, after = state_until(start, changes, later)
            if moved.anchor != s.anchor:
                cut = moved.window(later).start
                if cut <= t:  # the new billing date starts this very period
                    s, end = moved, moved.window(later).end
                elif cut < end:
                    end = cut
                    break
            later = after
        if end > until:
            return closed, Period(t, end)
        closed.append(Period(t, end))
        t = end


def plan_lines(
    start: Subscription, changes: Iterable[Change], catalogue: Catalogue, period: Period
) -> tuple[str, list[Line]]:
    """The plan in force at the period's start and its charges: the price, and the prorated
    difference of every upgrade during the period."""
    changes = list(changes)
    s = state_at(start, changes, period.start)
    plan = catalogue.get(s.plan) or catalogue.default
    lines = []
    if plan.price_micros_per_month:
        lines.append(Line("plan", f"{plan.display_name} plan", plan.price_micros_per_month))
    length = period.end - period.start
    for c in changes:
        if c.kind != "upgrade" or not period.start < c.effective_at < period.end:
            continue
        before = catalogue.get(state_at(start, changes, c.effective_at - _MS).plan) or plan
        after = catalogue.get(c.plan or "") or before
        old, new = before.price_micros_per_month, after.price_micros_per_month
        if old is None or new is None or new <= old:
            continue
        remaining = period.end - c.effective_at
        amount = prorate(new - old, remaining, length)
        day = c.effective_at.date().isoformat()
        lines.append(
            Line("proration", f"Upgrade to {after.display_name} on {day}, prorated", amount)
        )
    return plan.name, lines


def prorate(amount_micros: int, remaining: timedelta, length: timedelta) -> int:
    """`amount_micros` x remaining / length, to the millisecond, rounded down."""
    ms = timedelta(milliseconds=1)
    return amount_micros * (remaining // ms) // (length // ms)


def usage_lines(usage: Mapping[ItemKey, Metered]) -> list[Line]:
    """The period's metered lines, ordered by line item then item."""
    lines = []
    for (line_item, item), m in sorted(usage.items()):
        if line_item in METERED or m.cost_micros:
            label = f"{_LABELS.get(line_item, line_item)}: {item}" if item else line_item
            lines.append(Line("usage", label, m.cost_micros, line_item, item, m.quantity))
    return lines


def adjustment_lines(
    period: Period, usage_now: Mapping[ItemKey, Metered], billed: Mapping[ItemKey, Metered]
) -> list[Line]:
    """What `period` holds now beyond (or short of) what was billed for it."""
    lines = []
    day = period.start.date().isoformat()
    for key in sorted(set(usage_now) | set(billed)):
        now, was = usage_now.get(key, _NONE), billed.get(key, _NONE)
        cost, quantity = now.cost_micros - was.cost_micros, now.quantity - was.quantity
        if cost or quantity:
            line_item, item = key
            label = f"Adjustment for the period from {day}: {_LABELS.get(line_item, line_item)}"
            lines.append(
                Line(
                    "adjustment", f"{label}: {item}", cost, line_item, item, quantity, period.start
                )
            )
    return lines


def billed_for(period: Period, invoices: Iterable[Invoice]) -> dict[ItemKey, Metered]:
    """What the invoices billed for `period`: its own usage lines and later adjustments."""
    out: dict[ItemKey, Metered] = {}
    for inv in invoices:
        for line in inv.lines:
            own = line.kind == "usage" and inv.period == period
            adjusts = line.kind == "adjustment" and line.period_start == period.start
            if own or adjusts:
                key = (line.line_item, line.item)
                was = out.get(key, _NONE)
                out[key] = Metered(
                    was.quantity + line.quantity, was.cost_micros + line.amount_micros
                )
    return out


def credits_to_apply(topped_up_micros: int, applied_before_micros: int, usage_micros: int) -> int:
    """The part of the usage charges the prepaid balance pays."""
    available = max(topped_up_micros - applied_before_micros, 0)
    return min(available, max(usage_micros, 0))


_NONE = Metered(0, 0)
_MS = timedelta(milliseconds=1)
_LABELS = {"llm": "LLM", "tool_calls": "Tool calls", "storage": "Storage", "requests": "Requests"}
