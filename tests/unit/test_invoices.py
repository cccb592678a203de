"""Invoice rules: periods, plan charges with proration, adjustments, credits, totals."""

from datetime import UTC, date, datetime, timedelta

from schemas.plans import Catalogue
from tally.catalogue import load_plans
from tally.domain.invoices import (
    Invoice,
    Line,
    Metered,
    Period,
    adjustment_lines,
    billed_for,
    credits_to_apply,
    invoice_id,
    periods,
    plan_lines,
    prorate,
    usage_lines,
)
from tally.domain.subscriptions import change_plan, initial


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def catalogue() -> Catalogue:
    """The shipped catalogue with a list price for Pro, so that an upgrade between two
    priced plans on the same billing date can be shown."""
    data = load_plans().model_dump()
    for p in data["plans"]:
        if p["name"] == "pro":
            p["price_micros_per_month"] = 99_000_000
    return Catalogue.model_validate(data)


CAT = catalogue()


def plan(name: str):
    p = CAT.get(name)
    assert p is not None
    return p


def test_periods_follow_the_billing_window_from_signup():
    start = initial("developer", date(2026, 1, 31))
    closed, current = periods(start, [], at(2026, 1, 31), at(2026, 4, 15))
    assert closed == [
        Period(at(2026, 1, 31), at(2026, 2, 28)),  # day 31 clamps to February's last day
        Period(at(2026, 2, 28), at(2026, 3, 31)),
    ]
    assert current == Period(at(2026, 3, 31), at(2026, 4, 30))


def test_an_upgrade_to_a_new_billing_date_ends_the_period_at_that_day():
    start = initial("free", date(2026, 1, 10))
    up = change_plan(start, plan("free"), plan("developer"), date(2026, 1, 10), at(2026, 2, 20, 15))
    assert up is not None
    closed, current = periods(start, [up], at(2026, 1, 10), at(2026, 3, 25))
    assert closed == [
        Period(at(2026, 1, 10), at(2026, 2, 10)),
        Period(at(2026, 2, 10), at(2026, 2, 20)),  # free until the day of the upgrade
        Period(at(2026, 2, 20), at(2026, 3, 20)),  # then the new billing date
    ]
    assert current.start == at(2026, 3, 20)
    name, lines = plan_lines(start, [up], CAT, closed[2])
    # The day of the upgrade starts on free: the upgrade itself is prorated from 15:00.
    assert name == "free"
    (proration,) = lines
    length, remaining = timedelta(days=28), timedelta(days=28) - timedelta(hours=15)
    assert proration.amount_micros == 29_000_000 * (remaining // timedelta(milliseconds=1)) // (
        length // timedelta(milliseconds=1)
    )
    assert plan_lines(start, [up], CAT, closed[1]) == ("free", [])


def test_an_upgrade_mid_period_charges_the_prorated_difference():
    start = initial("developer", date(2026, 3, 1))
    up = change_plan(start, plan("developer"), plan("pro"), date(2026, 3, 1), at(2026, 3, 16))
    assert up is not None
    period = Period(at(2026, 3, 1), at(2026, 4, 1))  # 31 days, upgrade with 16 left
    name, lines = plan_lines(start, [up], CAT, period)
    assert name == "developer"
    assert [(x.kind, x.amount_micros) for x in lines] == [
        ("plan", 29_000_000),
        ("proration", 70_000_000 * 16 // 31),
    ]
    # The next period starts on Pro: its full price, nothing prorated.
    after = plan_lines(start, [up], CAT, Period(at(2026, 4, 1), at(2026, 5, 1)))
    assert after == ("pro", [Line("plan", "Pro plan", 99_000_000)])


def test_a_downgrade_changes_the_next_period_only():
    start = initial("pro", date(2026, 3, 1))
    down = change_plan(start, plan("pro"), plan("developer"), date(2026, 3, 1), at(2026, 3, 16))
    assert down is not None and down.effective_at == at(2026, 4, 1)
    march = plan_lines(start, [down], CAT, Period(at(2026, 3, 1), at(2026, 4, 1)))
    april = plan_lines(start, [down], CAT, Period(at(2026, 4, 1), at(2026, 5, 1)))
    assert [x.amount_micros for x in march[1]] == [99_000_000]
    assert [x.amount_micros for x in april[1]] == [29_000_000]


def test_proration_is_integer_and_rounds_down():
    assert prorate(10, timedelta(days=1), timedelta(days=3)) == 3
    assert prorate(29_000_000, timedelta(0), timedelta(days=30)) == 0
    assert prorate(29_000_000, timedelta(days=30), timedelta(days=30)) == 29_000_000


def test_usage_lines_list_the_metered_items_and_whatever_else_costs():
    usage = {
        ("tool_calls", "github"): Metered(3, 300),
        ("llm", "gpt-4o"): Metered(1000, 12_500),
        ("sessions", ""): Metered(4, 0),
        ("storage", "traces"): Metered(10, 0),
    }
    lines = usage_lines(usage)
    assert [(x.line_item, x.item, x.quantity, x.amount_micros) for x in lines] == [
        ("llm", "gpt-4o", 1000, 12_500),
        ("storage", "traces", 10, 0),
        ("tool_calls", "github", 3, 300),
    ]


def test_late_usage_is_adjusted_once_on_the_next_invoice():
    march = Period(at(2026, 3, 1), at(2026, 4, 1))
    april = Period(at(2026, 4, 1), at(2026, 5, 1))
    billed_march = Invoice(
        "o", march, "developer", (Line("usage", "LLM: gpt-4o", 500, "llm", "gpt-4o", 40),), 0
    )
    now = {("llm", "gpt-4o"): Metered(50, 650), ("tool_calls", "slack"): Metered(1, 10)}
    adjust = adjustment_lines(march, now, billed_for(march, [billed_march]))
    assert [(x.kind, x.item, x.quantity, x.amount_micros, x.period_start) for x in adjust] == [
        ("adjustment", "gpt-4o", 10, 150, march.start),
        ("adjustment", "slack", 1, 10, march.start),
    ]
    april_inv = Invoice("o", april, "developer", tuple(adjust), 0)
    # Once adjusted, March is billed in full: the invoice after April adds nothing.
    assert adjustment_lines(march, now, billed_for(march, [billed_march, april_inv])) == []


def test_credits_pay_usage_up_to_what_is_left_and_totals_add_up():
    assert credits_to_apply(1_000, 0, 300) == 300
    assert credits_to_apply(1_000, 800, 300) == 200
    assert credits_to_apply(1_000, 1_000, 300) == 0
    assert credits_to_apply(1_000, 0, -50) == 0
    inv = Invoice(
        "o",
        Period(at(2026, 3, 1), at(2026, 4, 1)),
        "developer",
        (Line("plan", "Developer plan", 29_000_000), Line("usage", "x", 300, "llm", "m", 1)),
        300,
    )
    assert (inv.subtotal_micros, inv.usage_micros, inv.total_micros) == (
        29_000_300,
        300,
        29_000_000,
    )


def test_an_invoice_id_is_the_same_wherever_it_is_made():
    p = Period(at(2026, 3, 1), at(2026, 4, 1))
    assert invoice_id("acme", p) == invoice_id("acme", p)
    assert invoice_id("acme", p) != invoice_id("acme2", p)
    assert invoice_id("acme", p).startswith("inv_") and len(invoice_id("acme", p)) == 24
