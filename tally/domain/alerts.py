"""Alert rules and what they fire: pure functions over plain values, no I/O.

A rule watches one figure (a meter of a scope in a window, a credit balance, a trial, a
subscription status) and fires when its condition first holds. Every alert has an id made
of what it is about: (org, rule, scope, window, threshold). Whatever evaluates the rules,
however often, in however many processes, the same crossing gets the same id, so storing
the id once is firing once. A reached threshold is resolved, once, when its window has
ended or the limit moved back above it (an upgrade).

Usage figures come in as `Figure`s: the org's meters today (from the quota overview, every
meter field of it, so a meter added there is watched with no change here). Figures of a
narrower scope (a user, an agent, a run: `scope="agent:a1"`) go through the same rules
once their budgets exist; only their source is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tally.domain.quota import Meter, Overview
from tally.domain.windows import Window

THRESHOLD_REACHED = "usage.threshold_reached"
THRESHOLD_RESOLVED = "usage.threshold_resolved"
CREDITS_LOW = "credits.low"
CREDITS_DEPLETED = "credits.depleted"
TRIAL_ENDING = "subscription.trial_ending"
PAST_DUE = "subscription.past_due"
ENDPOINT_DISABLED = "webhook.endpoint_disabled"
EVENT_TYPES = (
    THRESHOLD_REACHED,
    THRESHOLD_RESOLVED,
    CREDITS_LOW,
    CREDITS_DEPLETED,
    TRIAL_ENDING,
    PAST_DUE,
    ENDPOINT_DISABLED,
)

CREDITS = "credits"  # the rule meter of a credit balance
TRIAL = "trial"  # the rule meter of a trial's end
DEFAULT_PERCENTS = (80, 100)
DEFAULT_TRIAL_DAYS = 3
ORG_SCOPE = "org"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. Usage: exactly one of `at` (an amount) or `percent` (of the limit).
    `credits`: `below` micro-units. `trial`: `days` before the trial ends."""

    meter: str
    at: int | None = None
    percent: int | None = None
    below: int | None = None
    days: int | None = None
    default: bool = False

    @property
    def key(self) -> str:
        """What names the rule in alert ids: its meter and its condition."""
        for name in ("at", "percent", "below", "days"):
            value = getattr(self, name)
            if value is not None:
                return f"{self.meter}:{name}:{value}"
        return self.meter

    def threshold(self, limit: int | None) -> int | None:
        """The absolute amount a usage rule fires at; None when it cannot apply."""
        if self.at is not None:
            return self.at
        if self.percent is not None and limit is not None and limit > 0:
            return math.ceil(limit * self.percent / 100)
        return None


@dataclass(frozen=True, slots=True)
class Figure:
    """One meter of one scope over one window."""

    meter: str
    scope: str
    window: Window
    limit: int | None
    used: int


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: its id is a function of what it is about (see `alert_id`)."""

    id: str
    type: str
    org_id: str
    at: datetime
    rule: str
    meter: str
    scope: str
    window_start: datetime
    window_end: datetime
    threshold: int
    limit: int | None
    used: int

    def payload(self) -> dict[str, Any]:
        """The webhook body and the `usage.alerts` message: `{type, timestamp, data}`."""
        return {
            "type": self.type,
            "timestamp": iso(self.at),
            "data": {
                "id": self.id,
                "org_id": self.org_id,
                "rule": self.rule,
                "meter": self.meter,
                "scope": self.scope,
                "window_start": iso(self.window_start),
                "window_end": iso(self.window_end),
                "threshold": self.threshold,
                "limit": self.limit,
                "used": self.used,
            },
        }


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def alert_id(org_id: str, type_: str, rule: str, scope: str, window_start: datetime, n: int) -> str:
    """The id of (org, type, rule, scope, window, threshold): the same crossing, the same id."""
    raw = f"{org_id}|{type_}|{rule}|{scope}|{iso(window_start)}|{n}"
    return "msg_" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def default_rules(overview: Overview) -> list[Rule]:
    """80% and 100% on every limited meter of the overview, and the credit and trial rules."""
    rules = [
        Rule(f.meter, percent=p, default=True)
        for f in org_figures(overview)
        if f.limit is not None
        for p in DEFAULT_PERCENTS
    ]
    rules.append(Rule(TRIAL, days=DEFAULT_TRIAL_DAYS, default=True))
    return rules


def meters() -> list[str]:
    """The meters rules may name: every windowed meter of the quota overview."""
    return [f.name for f in dataclasses.fields(Overview) if f.type in ("Meter", Meter)]


def in_force(defaults: Sequence[Rule], own: Sequence[Rule]) -> list[Rule]:
    """The defaults, then the org's own rules; a rule given twice counts once."""
    seen: set[str] = set()
    out = []
    for rule in (*defaults, *own):
        if rule.key not in seen:
            seen.add(rule.key)
            out.append(rule)
    return out


def org_figures(overview: Overview) -> Iterator[Figure]:
    """Every windowed meter of an org's overview (concurrency has no window and no alert)."""
    for field in dataclasses.fields(overview):
        m = getattr(overview, field.name)
        if isinstance(m, Meter) and m.used is not None:
            yield Figure(field.name, ORG_SCOPE, m.window, m.limit, m.used)


def _usage_alert(org_id: str, rule: Rule, f: Figure, n: int, now: datetime, type_: str) -> Alert:
    first = alert_id(org_id, THRESHOLD_REACHED, rule.key, f.scope, f.window.start, n)
    id_ = first if type_ == THRESHOLD_REACHED else resolved_id(first)
    return Alert(
        id_, type_, org_id, now, rule.key, f.meter, f.scope, f.window.start, f.window.end,
        n, f.limit, f.used,
    )  # fmt: skip


def resolved_id(reached_id: str) -> str:
    return "msg_" + hashlib.sha256(f"{reached_id}|resolved".encode()).hexdigest()[:32]


def crossings(
    org_id: str, rules: Sequence[Rule], figures: Iterable[Figure], now: datetime
) -> list[Alert]:
    """Every usage threshold that holds now (firing each is left to whoever stores ids)."""
    out = []
    for f in figures:
        for rule in rules:
            if rule.meter != f.meter:
                continue
            n = rule.threshold(f.limit)
            if n is not None and n > 0 and f.used >= n:
                out.append(_usage_alert(org_id, rule, f, n, now, THRESHOLD_REACHED))
    return out


def resolutions(
    open_alerts: Iterable[Alert],
    rules: Sequence[Rule],
    figures: Iterable[Figure],
    now: datetime,
) -> list[Alert]:
    """The reached alerts that no longer hold: their window has ended, or in the same window
    the rule's threshold moved above what is used (a higher limit) or the rule is gone."""
    current = {(f.meter, f.scope): f for f in figures}
    by_key = {r.key: r for r in rules}
    out = []
    for a in open_alerts:
        f = current.get((a.meter, a.scope))
        if a.window_end <= now:
            gone = True
        elif f is None or f.window.start != a.window_start:
            gone = False  # no figure to judge by (yet)
        else:
            # A rule no longer in force (a default whose meter an upgrade made unlimited,
            # an own rule replaced), or a threshold above what is used, no longer holds.
            rule = by_key.get(a.rule)
            n = rule.threshold(f.limit) if rule is not None else None
            gone = n is None or f.used < n
        if gone:
            used = f.used if f is not None else a.used
            limit = f.limit if f is not None else a.limit
            out.append(
                dataclasses.replace(
                    a, id=resolved_id(a.id), type=THRESHOLD_RESOLVED, at=now, used=used, limit=limit
                )
            )
    return out


def credit_alerts(
    org_id: str, rules: Sequence[Rule], balance: int, opened: bool, window: Window, now: datetime
) -> list[Alert]:
    """`credits.depleted` once an opened account is at or below zero, and `credits.low` for
    each `below` rule under its amount; each once per billing window."""
    if not opened:
        return []
    out = []

    def fire(type_: str, rule: str, n: int) -> None:
        id_ = alert_id(org_id, type_, rule, ORG_SCOPE, window.start, n)
        out.append(
            Alert(
                id_,
                type_,
                org_id,
                now,
                rule,
                CREDITS,
                ORG_SCOPE,
                window.start,
                window.end,
                n,
                None,
                balance,
            )  # fmt: skip
        )

    if balance <= 0:
        fire(CREDITS_DEPLETED, CREDITS, 0)
    for rule in rules:
        if rule.meter == CREDITS and rule.below is not None and balance < rule.below:
            fire(CREDITS_LOW, rule.key, rule.below)
    return out


def subscription_alerts(
    org_id: str,
    rules: Sequence[Rule],
    status: str,
    trial_ends_at: datetime | None,
    past_due_since: datetime | None,
    now: datetime,
) -> list[Alert]:
    """`subscription.trial_ending` within a rule's days of the trial's end (once per trial
    end and rule); `subscription.past_due` once per time the status turned past due."""
    out = []
    if status == "trial" and trial_ends_at is not None and now < trial_ends_at:
        for rule in rules:
            if rule.meter != TRIAL or rule.days is None:
                continue
            start = trial_ends_at - timedelta(days=rule.days)
            if now >= start:
                id_ = alert_id(org_id, TRIAL_ENDING, rule.key, ORG_SCOPE, start, rule.days)
                out.append(
                    Alert(
                        id_,
                        TRIAL_ENDING,
                        org_id,
                        now,
                        rule.key,
                        TRIAL,
                        ORG_SCOPE,
                        start,
                        trial_ends_at,
                        rule.days,
                        None,
                        0,
                    )  # fmt: skip
                )
    if status == "past_due" and past_due_since is not None:
        id_ = alert_id(org_id, PAST_DUE, "past_due", ORG_SCOPE, past_due_since, 0)
        out.append(
            Alert(
                id_,
                PAST_DUE,
                org_id,
                now,
                "past_due",
                "subscription",
                ORG_SCOPE,
                past_due_since,
                past_due_since,
                0,
                None,
                0,
            )  # fmt: skip
        )
    return out


def endpoint_disabled(
    org_id: str, endpoint_id: str, failing_since: datetime, now: datetime
) -> Alert:
    """The alert that says an endpoint was disabled after failing since `failing_since`."""
    id_ = alert_id(org_id, ENDPOINT_DISABLED, endpoint_id, ORG_SCOPE, failing_since, 0)
    return Alert(
        id_, ENDPOINT_DISABLED, org_id, now, endpoint_id, "webhook", ORG_SCOPE, failing_since,
        now, 0, None, 0,
    )  # fmt: skip
