"""Quota arithmetic: every meter in every window from a plan and what has been used."""

from datetime import UTC, date, datetime

from tally.catalogue import load_plans
from tally.domain.quota import Used, billing_window, meter, overview

CAT = load_plans()
NOW = datetime(2026, 6, 10, 12, 34, 56, tzinfo=UTC)


def test_meter_arithmetic():
    w = billing_window(date(2026, 1, 1), NOW)
    m = meter(15_000_000, 4_200_000, w)
    assert (m.limit, m.used, m.remaining) == (15_000_000, 4_200_000, 10_800_000)
    assert meter(10, 15, w).remaining == 0
    assert meter(None, 15, w).remaining is None
    assert meter(10, None, w).remaining is None


def test_overview_of_the_free_plan():
    free = CAT.get("free")
    w = billing_window(date(2026, 1, 5), NOW)
    used = Used(
        tokens=100,
        tool_calls=1001,
        requests=7,
        requests_day=5,
        requests_minute=2,
        upstream_cost_micros=10,
        sessions=4,
    )
    o = overview(free, w, NOW, used)
    assert (o.window.start, o.window.end) == (datetime(2026, 6, 5, tzinfo=UTC), w.end)
    assert (o.tokens.limit, o.tokens.remaining) == (15_000_000, 14_999_900)
    assert (o.tool_calls.used, o.tool_calls.remaining) == (1001, 0)
    assert (o.requests.remaining, o.requests_day.remaining, o.requests_minute.remaining) == (
        9993,
        495,
        8,
    )
    assert o.requests_minute.window.start == datetime(2026, 6, 10, 12, 34, tzinfo=UTC)
    assert o.requests_day.window.end == datetime(2026, 6, 11, tzinfo=UTC)
    assert o.upstream_cost_micros.remaining == 4_999_990
    assert (o.sessions.limit, o.sessions.active, o.sessions.remaining) == (3, 4, 0)


def test_overview_of_an_unlimited_plan_and_missing_figures():
    o = overview(CAT.get("enterprise"), billing_window(date(2026, 1, 1), NOW), NOW, Used(None))
    assert o.tokens.limit is None and o.tokens.used is None and o.tokens.remaining is None
    assert o.sessions.remaining is None
