"""Subscriptions: which plan is in force at a time, when a change applies, the billing anchor.

An org starts on the plan it was created with, anchored on its signup date. Every later
change is a `Change` recorded at a time; the subscription at time `t` is the fold of the
changes recorded up to `t` (`state_at`). The rules, from the seeds:

- An upgrade (a plan of higher rank) takes effect when it is recorded.
- A downgrade, or a cancellation (a downgrade to the catalogue's default plan), takes effect
  at the end of the current period: the billing window, or the trial if it ends sooner. An
  org that is past due or whose trial has ended has no paid period to honour, so for it a
  downgrade takes effect at once (the seed: "add a payment method or downgrade to Free").
- A later change replaces a scheduled one; asking for the plan already in force drops it.
- Billing anchor: plans anchored on `signup` use the signup date. A plan anchored on
  `billing_date` uses the date its paid subscription started: switching between two such
  plans keeps the billing date, coming from a signup-anchored plan starts a new one on the
  day the change takes effect. An org created on a paid plan is billed from its signup date.
- Reverting to a free plan (price 0) makes the org `active` again and ends any trial.
- Status: `active`, `trial` (until `trial_ends_at`) or `past_due`. New runs are refused when
  the org is past due or its trial has ended; reads keep working.

Pure: no I/O; times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Literal

from schemas.plans import Plan
from tally.domain.windows import Window, monthly_window

Status = Literal["active", "trial", "past_due"]
Kind = Literal["upgrade", "downgrade", "cancel", "resume", "status"]
Block = Literal["trial_ended", "past_due"]


class SubscriptionError(ValueError):
    """A change that cannot be made; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change.

    `plan`, `anchor`: for plan changes, the plan and the billing anchor in force once it
    applies. `status`, `trial_ends_at`: the status it sets (`None`: unchanged).
    """

    kind: Kind
    recorded_at: datetime
    effective_at: datetime
    plan: str | None = None
    anchor: date | None = None
    status: Status | None = None
    trial_ends_at: datetime | None = None

    @property
    def immediate(self) -> bool:
        return self.effective_at <= self.recorded_at


@dataclass(frozen=True, slots=True)
class Subscription:
    plan: str
    anchor: date
    status: Status = "active"
    trial_ends_at: datetime | None = None
    pending: Change | None = None

    def window(self, now: datetime) -> Window:
        """The billing window that contains `now`."""
        return monthly_window(self.anchor.day, now)

    def block(self, now: datetime) -> Block | None:
        """Why new runs are refused at `now`, if they are."""
        if self.status == "past_due":
            return "past_due"
        if self.status == "trial" and self.trial_ends_at is not None and now >= self.trial_ends_at:
            return "trial_ended"
        return None


def initial(plan: str, signup_date: date) -> Subscription:
    return Subscription(plan=plan, anchor=signup_date)


def _apply(s: Subscription, c: Change) -> Subscription:
    if c.kind == "status":
        return replace(s, status=c.status or s.status, trial_ends_at=c.trial_ends_at)
    if c.kind == "resume":
        return replace(s, pending=None)
    assert c.plan is not None
    s = replace(s, plan=c.plan, anchor=c.anchor or s.anchor, pending=None)
    if c.status is not None:
        s = replace(s, status=c.status, trial_ends_at=c.trial_ends_at)
    return s


def _settle(s: Subscription, t: datetime) -> Subscription:
    """Apply the scheduled change if it is due by `t`."""
    if s.pending is not None and s.pending.effective_at <= t:
        return _apply(s, s.pending)
    return s


def state_at(start: Subscription, changes: Iterable[Change], t: datetime) -> Subscription:
    """The subscription in force at `t`, given every change in the order it was recorded."""
    return state_until(start, changes, t)[0]


def state_until(
    start: Subscription, changes: Iterable[Change], t: datetime
) -> tuple[Subscription, datetime | None]:
    """`state_at(t)`, and the first time after `t` at which it may be different with no
    new change recorded: a scheduled change taking effect, or a change recorded for later
    (`None`: it stays as it is)."""
    s = start
    later = None
    for c in changes:
        if c.recorded_at > t:
            later = c.recorded_at
            break
        s = _settle(s, c.recorded_at)
        now_or_later = c.kind in ("status", "resume") or c.immediate
        s = _apply(s, c) if now_or_later else replace(s, pending=c)
    s = _settle(s, t)
    if s.pending is not None and (later is None or s.pending.effective_at < later):
        later = s.pending.effective_at
    return s, later


def _anchor_after(s: Subscription, current: Plan, target: Plan, signup: date, at: datetime) -> date:
    if target.anchor == "signup":
        return signup
    if current.anchor == "billing_date":
        return s.anchor  # the same paid subscription: its billing date carries on
    return at.date()  # a new paid subscription starts its billing date today


def change_plan(
    s: Subscription,
    current: Plan,
    target: Plan,
    signup: date,
    now: datetime,
    *,
    cancel: bool = False,
) -> Change | None:
    """The change that moves `s` (on `current`) to `target` at `now`; `None` if nothing changes.

    `cancel` marks a downgrade to the default plan asked for as a cancellation.
    """
    if target.name == s.plan:
        return None if s.pending is None else Change("resume", now, now, plan=target.name)
    if s.pending is not None and s.pending.plan == target.name:
        return None  # already scheduled
    status: Status | None = "active" if target.free else None
    if target.rank > current.rank:
        anchor = _anchor_after(s, current, target, signup, now)
        return Change("upgrade", now, now, target.name, anchor, status)
    if s.block(now) is not None:
        at = now  # nothing paid for to run out
    else:
        at = s.window(now).end
        if s.status == "trial" and s.trial_ends_at is not None:
            at = min(at, s.trial_ends_at)
    kind: Kind = "cancel" if cancel else "downgrade"
    return Change(kind, now, at, target.name, _anchor_after(s, current, target, signup, at), status)


def change_status(
    s: Subscription,
    plan: Plan,
    status: Status,
    trial_ends_at: datetime | None,
    now: datetime,
) -> Change | None:
    """The change that sets the org's payment status; `None` if it is already so."""
    if status == "trial" and trial_ends_at is None:
        raise SubscriptionError("a trial needs trial_ends_at: when it ends")
    if status != "trial" and trial_ends_at is not None:
        raise SubscriptionError("trial_ends_at only goes with status 'trial'")
    if status != "active" and plan.free:
        raise SubscriptionError(
            f"the {plan.name} plan costs nothing, so it can be neither on trial nor past due; "
            "change the plan first"
        )
    if status == s.status and trial_ends_at == s.trial_ends_at:
        return None
    return Change("status", now, now, status=status, trial_ends_at=trial_ends_at)
