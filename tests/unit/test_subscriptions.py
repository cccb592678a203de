"""Plan changes: upgrade now, downgrade and cancel at period end, anchors, status."""

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.catalogue import load_plans
from tally.domain.subscriptions import (
    Change,
    SubscriptionError,
    change_plan,
    change_status,
    initial,
    state_at,
    state_until,
)

CAT = load_plans()
FREE, DEV, STARTER, PRO, ENT = (
    CAT.get("free"),
    CAT.get("developer"),
    CAT.get("starter"),
    CAT.get("pro"),
    CAT.get("enterprise"),
)
SIGNUP = date(2026, 1, 10)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def plan(name: str):
    p = CAT.get(name)
    assert p is not None
    return p


def run(start, *steps):
    """Apply (time, target plan name | ('status', status, trial_end) | 'cancel') in order."""
    changes: list[Change] = []
    for t, what in steps:
        c = step(start, changes, t, what)
        if c is not None:
            changes.append(c)
    return changes


def step(start, changes, t, what) -> Change | None:
    """The change one request at `t` records (see `run`)."""
    s = state_at(start, changes, t)
    if what == "cancel":
        return change_plan(s, plan(s.plan), CAT.default, SIGNUP, t, cancel=True)
    if isinstance(what, tuple):
        return change_status(s, plan(s.plan), what[1], what[2], t)
    return change_plan(s, plan(s.plan), plan(what), SIGNUP, t)


def test_a_new_org_is_on_its_plan_anchored_on_signup():
    s = state_at(initial("free", SIGNUP), [], at(2026, 3, 1))
    assert (s.plan, s.anchor, s.status, s.pending) == ("free", SIGNUP, "active", None)
    w = s.window(at(2026, 3, 1))
    assert (w.start, w.end) == (at(2026, 2, 10), at(2026, 3, 10))


def test_upgrade_takes_effect_at_once_and_starts_a_billing_date():
    start = initial("free", SIGNUP)
    changes = run(start, (at(2026, 3, 15, 14, 30), "developer"))
    assert changes[0].kind == "upgrade" and changes[0].immediate
    before = state_at(start, changes, at(2026, 3, 15, 14, 29))
    assert before.plan == "free"
    s = state_at(start, changes, at(2026, 3, 15, 14, 30))
    assert (s.plan, s.anchor) == ("developer", date(2026, 3, 15))
    w = s.window(at(2026, 4, 20))
    assert (w.start, w.end) == (at(2026, 4, 15), at(2026, 5, 15))


def test_paid_to_paid_upgrade_keeps_the_billing_date():
    start = initial("free", SIGNUP)
    changes = run(start, (at(2026, 3, 15), "developer"), (at(2026, 4, 2), "pro"))
    s = state_at(start, changes, at(2026, 4, 2))
    assert (s.plan, s.anchor) == ("pro", date(2026, 3, 15))


def test_downgrade_waits_for_the_end_of_the_period():
    start = initial("free", SIGNUP)
    changes = run(start, (at(2026, 3, 15), "pro"), (at(2026, 4, 2, 9), "starter"))
    down = changes[-1]
    assert down.kind == "downgrade" and down.effective_at == at(2026, 4, 15)
    s = state_at(start, changes, at(2026, 4, 14, 23, 59))
    assert s.plan == "pro" and s.pending == down
    s = state_at(start, changes, at(2026, 4, 15))
    assert (s.plan, s.anchor, s.pending) == ("starter", date(2026, 3, 15), None)


def test_cancel_reverts_to_free_on_the_signup_anchor_at_period_end():
    start = initial("free", SIGNUP)
    changes = run(start, (at(2026, 3, 15), "developer"), (at(2026, 3, 20), "cancel"))
    cancel = changes[-1]
    assert (cancel.kind, cancel.plan, cancel.effective_at) == ("cancel", "free", at(2026, 4, 15))
    assert state_at(start, changes, at(2026, 4, 14)).plan == "developer"
    s = state_at(start, changes, at(2026, 4, 15))
    assert (s.plan, s.anchor) == ("free", SIGNUP)
    w = s.window(at(2026, 4, 15))
    assert (w.start, w.end) == (at(2026, 4, 10), at(2026, 5, 10))


def test_upgrade_replaces_a_scheduled_downgrade():
    start = initial("pro", SIGNUP)
    changes = run(start, (at(2026, 3, 1), "starter"), (at(2026, 3, 2), "business"))
    s = state_at(start, changes, at(2026, 6, 1))
    assert (s.plan, s.pending) == ("business", None)


def test_asking_for_the_current_plan_drops_a_scheduled_change():
    start = initial("pro", SIGNUP)
    changes = run(start, (at(2026, 3, 1), "cancel"), (at(2026, 3, 2), "pro"))
    assert changes[-1].kind == "resume"
    assert state_at(start, changes, at(2026, 6, 1)).plan == "pro"


def test_nothing_changes_twice():
    start = initial("pro", SIGNUP)
    s = state_at(start, [], at(2026, 3, 1))
    assert change_plan(s, PRO, PRO, SIGNUP, at(2026, 3, 1)) is None
    changes = run(start, (at(2026, 3, 1), "cancel"))
    s = state_at(start, changes, at(2026, 3, 2))
    assert change_plan(s, PRO, FREE, SIGNUP, at(2026, 3, 2), cancel=True) is None
    assert change_plan(s, PRO, FREE, SIGNUP, at(2026, 3, 2)) is None


def test_a_later_downgrade_replaces_a_scheduled_one():
    start = initial("scale", SIGNUP)
    changes = run(start, (at(2026, 3, 1), "pro"), (at(2026, 3, 2), "starter"))
    s = state_at(start, changes, at(2026, 3, 10))
    assert s.plan == "starter"


def test_a_change_is_invisible_before_it_is_recorded():
    start = initial("free", SIGNUP)
    changes = run(start, (at(2026, 5, 1), "developer"))
    assert state_at(start, changes, at(2026, 4, 30)).plan == "free"


def test_downgrade_during_a_trial_applies_when_the_trial_ends():
    start = initial("pro", SIGNUP)
    trial_end = at(2026, 3, 5)
    changes = run(
        start, (at(2026, 2, 20), ("status", "trial", trial_end)), (at(2026, 2, 25), "cancel")
    )
    assert changes[-1].effective_at == trial_end
    s = state_at(start, changes, trial_end)
    assert (s.plan, s.status, s.trial_ends_at) == ("free", "active", None)


def test_a_blocked_org_downgrades_at_once():
    start = initial("pro", SIGNUP)
    changes = run(
        start, (at(2026, 2, 20), ("status", "past_due", None)), (at(2026, 2, 21), "cancel")
    )
    assert changes[-1].immediate
    s = state_at(start, changes, at(2026, 2, 21))
    assert (s.plan, s.status) == ("free", "active")
    assert s.block(at(2026, 2, 21)) is None


def test_trial_blocks_runs_once_it_has_ended():
    start = initial("pro", SIGNUP)
    end = at(2026, 3, 1)
    changes = run(start, (at(2026, 2, 1), ("status", "trial", end)))
    s = state_at(start, changes, at(2026, 2, 28))
    assert s.status == "trial" and s.block(at(2026, 2, 28, 23)) is None
    assert s.block(end) == "trial_ended"
    changes += run(state_at(start, changes, end), (at(2026, 3, 2), ("status", "active", None)))
    s = state_at(start, changes, at(2026, 3, 2))
    assert (s.status, s.trial_ends_at, s.block(at(2026, 3, 2))) == ("active", None, None)


def test_past_due_blocks_until_active_again():
    start = initial("developer", SIGNUP)
    changes = run(start, (at(2026, 2, 1), ("status", "past_due", None)))
    assert state_at(start, changes, at(2026, 2, 1)).block(at(2026, 2, 1)) == "past_due"


def test_status_rules():
    s = state_at(initial("pro", SIGNUP), [], at(2026, 2, 1))
    with pytest.raises(SubscriptionError, match="trial_ends_at"):
        change_status(s, PRO, "trial", None, at(2026, 2, 1))
    with pytest.raises(SubscriptionError, match="only goes with"):
        change_status(s, PRO, "active", at(2026, 3, 1), at(2026, 2, 1))
    free = state_at(initial("free", SIGNUP), [], at(2026, 2, 1))
    with pytest.raises(SubscriptionError, match="costs nothing"):
        change_status(free, FREE, "past_due", None, at(2026, 2, 1))
    assert change_status(s, PRO, "active", None, at(2026, 2, 1)) is None


def test_status_change_keeps_a_scheduled_downgrade():
    start = initial("pro", SIGNUP)
    changes = run(
        start, (at(2026, 2, 12), "starter"), (at(2026, 2, 13), ("status", "past_due", None))
    )
    s = state_at(start, changes, at(2026, 2, 14))
    assert s.status == "past_due" and s.pending is not None and s.pending.plan == "starter"


def test_org_created_on_a_paid_plan_is_billed_from_signup_and_keeps_it():
    start = initial("developer", date(2026, 1, 31))
    changes = run(start, (at(2026, 2, 10), "pro"))
    s = state_at(start, changes, at(2026, 2, 10))
    w = s.window(at(2026, 2, 10))
    assert (s.anchor, w.start, w.end) == (date(2026, 1, 31), at(2026, 1, 31), at(2026, 2, 28))


@pytest.mark.parametrize("day", [29, 30, 31])
def test_cancel_at_the_end_of_a_short_month(day):
    start = initial("free", date(2025, 12, 1))
    changes = run(start, (at(2028, 1, day), "developer"), (at(2028, 2, 3), "cancel"))
    # A billing date on the 29th-31st ends February's period on its last day (2028: leap).
    assert changes[-1].effective_at == at(2028, 2, 29)


def test_enterprise_upgrade_is_immediate():
    start = initial("scale", SIGNUP)
    changes = run(start, (at(2026, 2, 1), "enterprise"))
    s = state_at(start, changes, at(2026, 2, 1) + timedelta(milliseconds=1))
    assert (s.plan, s.anchor) == ("enterprise", SIGNUP)


_STEP = st.one_of(
    st.sampled_from(["free", "developer", "starter", "pro", "scale", "cancel"]),
    st.tuples(
        st.just("status"),
        st.sampled_from(["active", "trial", "past_due"]),
        st.none() | st.integers(0, 60).map(lambda d: at(2026, 3, 1) + timedelta(days=d)),
    ),
)


@given(
    first=st.sampled_from(["free", "starter", "pro"]),
    steps=st.lists(st.tuples(st.integers(0, 120 * 24), _STEP), max_size=6),
    asked=st.integers(-24, 150 * 24),
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=8),
)
def test_the_state_holds_until_the_time_state_until_gives(first, steps, asked, probes):
    """Between `t` and the time `state_until` gives, the subscription in force is the one at
    `t` (what lets the quota API keep an org's account until then)."""
    start = initial(first, SIGNUP)
    base = at(2026, 2, 1)
    changes: list[Change] = []
    for h, what in sorted(steps, key=lambda step: step[0]):
        try:
            c = step(start, changes, base + timedelta(hours=h), what)
        except SubscriptionError:  # refused (a trial with no end, say): nothing recorded
            continue
        if c is not None:
            changes.append(c)
    t = base + timedelta(hours=asked)
    s, later = state_until(start, changes, t)
    assert s == state_at(start, changes, t)
    end = later if later is not None else t + timedelta(days=400)
    assert end > t
    for p in probes:
        probe = min(t + (end - t) * p, end - timedelta(microseconds=1))  # before `end`
        assert state_at(start, changes, probe) == s, (probe, later)
    if later is not None:  # something does happen then: a change is recorded or takes effect
        recorded = {c.recorded_at for c in changes}
        effective = {c.effective_at for c in changes}
        assert later in recorded | effective
