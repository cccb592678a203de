"""Every outcome of the admission check, from plain inputs."""

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from schemas.plans import PlanOverrides, apply_overrides
from tally.catalogue import load_plans
from tally.domain.admission import Ask, Context, decide, from_worker
from tally.domain.quota import Used
from tally.domain.subscriptions import Subscription

CAT = load_plans()
NOW = datetime(2026, 6, 10, 12, 0, 30, tzinfo=UTC)


def ctx(plan: str = "free", **kw) -> Context:
    p = CAT.get(plan)
    assert p is not None
    sub = kw.pop("subscription", Subscription(plan, date(2026, 1, 1)))
    return Context(
        plan=kw.pop("plan_obj", p),
        subscription=sub,
        window=sub.window(NOW),
        used=kw.pop("used", Used()),
        now=NOW,
        **kw,
    )


def test_allowed_reports_the_meter():
    d = decide(Ask("tokens", 1000, "gpt-4o-mini"), ctx(used=Used(tokens=4_200_000)))
    assert (d.allowed, d.status, d.code) == (True, 200, None)
    assert (d.limit, d.used, d.remaining) == (15_000_000, 4_200_000, 10_800_000)
    assert d.reset_at == datetime(2026, 7, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("meter", "used", "limit"),
    [
        ("tokens", Used(tokens=15_000_000), 15_000_000),
        ("tool_calls", Used(tool_calls=1000), 1000),
        ("requests", Used(requests=10_000), 10_000),
        ("runs", Used(runs=500), 500),
    ],
)
def test_monthly_cap_is_billing_limit_reached(meter, used, limit):
    d = decide(Ask(meter, 1), ctx(used=used))
    assert (d.allowed, d.status, d.code) == (False, 429, "billing_limit_reached")
    assert (d.limit, d.used, d.remaining) == (limit, limit, 0)
    assert "resets at 2026-07-01T00:00:00Z" in d.message and "upgrade" in d.message
    assert d.retry_after is None


def test_the_last_unit_of_an_allowance_is_allowed_and_the_next_is_not():
    assert decide(Ask("tool_calls", 1), ctx(used=Used(tool_calls=999))).allowed
    assert not decide(Ask("tool_calls", 1), ctx(used=Used(tool_calls=1000))).allowed
    assert not decide(Ask("tool_calls", 2), ctx(used=Used(tool_calls=999))).allowed


def test_unlimited_meter_never_refuses():
    d = decide(Ask("tool_calls", 10**9), ctx("developer", used=Used(tool_calls=10**12)))
    assert d.allowed and d.limit is None and d.remaining is None


def test_managed_upstream_budget_is_billing_limit_reached_with_byok_advice():
    used = Used(upstream_cost_micros=50_000_000)
    d = decide(Ask("requests", 1, "gpt-4o-mini"), ctx("pro", used=used))
    assert (d.status, d.code) == (429, "billing_limit_reached")
    assert "BYOK" in d.message and d.limit == 50_000_000
    assert decide(Ask("requests", 1, "gpt-4o", mode="byok"), ctx("pro", used=used)).allowed
    assert decide(Ask("tool_calls", 1), ctx("pro", used=used)).allowed


@pytest.mark.parametrize(
    ("used", "per", "retry"),
    [
        (Used(requests=600, requests_day=500, requests_minute=0), "day", 43170),
        (Used(requests=600, requests_day=20, requests_minute=10), "minute", 30),
    ],
)
def test_bursts_are_rate_limited_with_retry_after(used, per, retry):
    d = decide(Ask("requests", 1, "gpt-4o-mini"), ctx(used=used))
    assert (d.status, d.code, d.retry_after) == (429, "rate_limited", retry)
    assert f"per-{per} burst" in d.message and "retry after" in d.message


def test_day_burst_wins_over_minute_burst_and_monthly_over_both():
    used = Used(requests=10, requests_day=500, requests_minute=10)
    assert decide(Ask("requests"), ctx(used=used)).retry_after == 43170
    used = replace(used, requests=10_000)
    assert decide(Ask("requests"), ctx(used=used)).code == "billing_limit_reached"


def test_sessions_at_the_limit_are_concurrency_limit():
    d = decide(Ask("sessions"), ctx(used=Used(sessions=3)))
    assert (d.status, d.code) == (429, "concurrency_limit")
    assert "end a session" in d.message
    d = decide(Ask("sessions"), ctx(used=Used(sessions=2)))
    assert d.allowed and (d.limit, d.used, d.remaining, d.reset_at) == (3, 2, 1, None)


def test_a_sequenced_check_leaves_the_cap_to_the_worker_but_not_the_other_rules():
    full = Used(sessions=3)
    assert not decide(Ask("sessions"), ctx(used=full)).allowed
    assert decide(Ask("sessions"), ctx(used=full, sequenced=True)).allowed


def test_managed_model_outside_the_whitelist_is_plan_limit_error():
    d = decide(Ask("requests", 1, "gpt-4o"), ctx())
    assert (d.status, d.code) == (403, "plan_limit_error")
    assert "gpt-4o-mini" in d.message and "upgrade to a plan with BYOK" in d.message
    d = decide(Ask("requests", 1, "gpt-4o"), ctx("pro"))
    assert d.code == "plan_limit_error" and "switch to BYOK" in d.message


def test_default_model_stands_in_when_no_model_is_given():
    d = decide(Ask("requests"), ctx(default_model="gpt-4o"))
    assert (d.status, d.code) == (403, "plan_limit_error")
    assert "workspace default model 'gpt-4o'" in d.message and "dashboard" in d.message
    assert decide(Ask("requests"), ctx(default_model="gpt-4o-mini")).allowed
    assert decide(Ask("requests"), ctx()).allowed  # no model at all: nothing to refuse
    assert decide(Ask("requests", 1, "gpt-4o-mini"), ctx(default_model="gpt-4o")).allowed


def test_byok_lifts_the_whitelist_where_offered_only():
    assert decide(Ask("requests", 1, "claude-opus", mode="byok"), ctx("pro")).allowed
    d = decide(Ask("requests", 1, "gpt-4o", mode="byok"), ctx())
    assert (d.status, d.code) == (403, "plan_limit_error") and "BYOK" in d.message


def test_model_rules_skip_meters_without_a_model():
    assert decide(Ask("tool_calls"), ctx(default_model="gpt-4o")).allowed
    assert decide(Ask("sessions", mode="byok"), ctx()).allowed
    assert decide(Ask("sessions", 1, "gpt-4o"), ctx()).code == "plan_limit_error"


def test_plans_without_a_whitelist_take_any_model():
    assert decide(Ask("tokens", 1, "gpt-4o"), ctx("developer")).allowed


@pytest.mark.parametrize(
    ("status", "trial_end", "text"),
    [
        ("past_due", None, "past due"),
        ("trial", datetime(2026, 6, 10, tzinfo=UTC), "trial ended at 2026-06-10T00:00:00Z"),
    ],
)
def test_blocked_org_gets_payment_required(status, trial_end, text):
    sub = Subscription("pro", date(2026, 1, 1), status, trial_end)
    d = decide(Ask("requests", 1, "gpt-4o"), ctx("pro", subscription=sub))
    assert (d.status, d.code) == (402, "payment_required") and text in d.message


def test_running_trial_is_allowed():
    sub = Subscription("pro", date(2026, 1, 1), "trial", datetime(2026, 6, 11, tzinfo=UTC))
    assert decide(Ask("requests", 1, "gpt-4o-mini"), ctx("pro", subscription=sub)).allowed


def test_test_keys_never_count_but_obey_the_plan():
    used = Used(tool_calls=5000, sessions=3, requests=10**6, requests_day=10**6)
    for meter in ("tool_calls", "sessions", "requests"):
        d = decide(Ask(meter, key_mode="test"), ctx(used=used))
        assert d.allowed, meter
    assert decide(Ask("requests", 1, "gpt-4o", key_mode="test"), ctx()).code == "plan_limit_error"
    sub = Subscription("pro", date(2026, 1, 1), "past_due")
    assert decide(Ask("tool_calls", key_mode="test"), ctx("pro", subscription=sub)).status == 402


def test_unavailable_figures_answer_503():
    for meter in ("tokens", "tool_calls", "requests", "sessions"):
        d = decide(Ask(meter), ctx(used=Used(None, None, None, None, None, None, None)))
        assert (d.status, d.code, d.retry_after) == (503, "quota_unavailable", 1), meter
    d = decide(Ask("requests"), ctx(used=Used(requests_minute=None)))
    assert d.code == "quota_unavailable"


def test_enterprise_overrides_apply():
    ent = CAT.get("enterprise")
    assert ent is not None
    plan = apply_overrides(ent, PlanOverrides(tool_calls_per_month=50))
    c = ctx("enterprise", plan_obj=plan, used=Used(tool_calls=50))
    assert decide(Ask("tool_calls"), c).code == "billing_limit_reached"
    assert decide(Ask("tokens", 10**15), c).allowed  # not overridden: unlimited


def test_amount_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        decide(Ask("tokens", 0), ctx())


def test_a_run_already_counted_is_never_refused_by_the_runs_cap():
    plan = apply_overrides(CAT.get("enterprise"), PlanOverrides(runs_per_month=5))
    sub = Subscription("enterprise", date(2026, 1, 1))
    at_cap = ctx("enterprise", plan_obj=plan, subscription=sub, used=Used(runs=5))
    d = decide(Ask("runs"), at_cap)
    assert (d.status, d.code) == (429, "billing_limit_reached")
    assert "run allowance of the Enterprise plan is used up: 5 of 5" in d.message
    d = decide(Ask("runs", counted=True), at_cap)
    assert (d.allowed, d.limit, d.used, d.remaining) == (True, 5, 5, 0)
    assert decide(Ask("runs", key_mode="test"), at_cap).allowed
    assert decide(Ask("runs"), replace(at_cap, used=Used(runs=4))).allowed
    # The standing still comes first: a past-due org starts no run, counted or not.
    past_due = replace(at_cap, subscription=replace(sub, status="past_due"))
    assert decide(Ask("runs", counted=True), past_due).code == "payment_required"


def test_the_workers_decision_is_answered_with_the_figure_it_decided_on():
    c = ctx(sequenced=True)
    ok = from_worker(Ask("sessions"), c, 3, 2, allowed=True)
    assert (ok.allowed, ok.limit, ok.used, ok.remaining, ok.reset_at) == (True, 3, 2, 1, None)
    no = from_worker(Ask("sessions"), c, 3, 3, allowed=False)
    assert (no.status, no.code, no.used) == (429, "concurrency_limit", 3)
    assert "end a session" in no.message
    no = from_worker(Ask("tokens", 1_000), c, 15_000_000, 14_999_500, allowed=False)
    assert (no.status, no.code, no.remaining) == (429, "billing_limit_reached", 500)
    assert no.reset_at == c.window.end


def test_the_upstream_cost_budget_can_be_checked_and_reserved_like_a_meter():
    used = Used(upstream_cost_micros=4_500_000)
    d = decide(Ask("upstream_cost_micros", 600_000), ctx(used=used))
    assert (d.status, d.code, d.remaining) == (429, "billing_limit_reached", 500_000)
    assert "upstream-cost" in d.message
    assert decide(Ask("upstream_cost_micros", 500_000), ctx(used=used)).allowed
    assert decide(Ask("upstream_cost_micros", 600_000), ctx(used=used, sequenced=True)).allowed
