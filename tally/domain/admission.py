"""Admission: may an org go on? One pure decision from plain inputs.

The route gathers the inputs (plan in force, subscription, figures from the counter table)
and renders the `Decision`. Rules, checked in order:

1. Standing: past due, or a trial that has ended -> 402 `payment_required`.
2. Model (LLM meters `tokens` and `requests`, or any check that names a model):
   BYOK on a plan that does not offer it -> 403 `plan_limit_error`; in managed mode a model
   outside the plan's whitelist -> 403 `plan_limit_error`, and when no model is given the
   workspace default model stands in for it. BYOK lifts the whitelist.
3. Test keys stop here, allowed: test traffic is free and never counts against a limit.
4. A figure the check needs that is not loaded yet -> 503 `quota_unavailable`.
5. Monthly allowance of the meter: `used + amount > limit` -> 429 `billing_limit_reached`.
   In managed mode the LLM meters also stop when the upstream-cost budget is used up.
6. Bursts (`requests`): per UTC day, then per UTC minute -> 429 `rate_limited`, with
   `retry_after` the seconds until the window ends.
7. Sessions: `active + amount > limit` -> 429 `concurrency_limit`.

A strict check (`Context.sequenced`: sessions, or a check that reserves) leaves the meter's
own cap (5 and 7) to the worker that owns the org: `tally.domain.reservations` decides it
in log order against the exact figures plus the reservations held.

Runs (`runs`) take rule 5 with the runs of the window; a run already counted in the window
(`Ask.counted`: the caller named it and the store has it) is never refused by that cap.

Every refusal's message says what to do: upgrade, switch to BYOK, fix the default model,
end a session, or wait until the reset at a given time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from schemas.plans import Plan
from tally.domain.quota import Used, figures
from tally.domain.subscriptions import Subscription
from tally.domain.windows import Window, day_window, minute_window

MeterName = Literal["tokens", "tool_calls", "requests", "upstream_cost_micros", "sessions", "runs"]
Mode = Literal["managed", "byok"]
KeyMode = Literal["live", "test"]

LLM_METERS = ("tokens", "requests")
_NOUN = {
    "tokens": "token",
    "tool_calls": "tool-call",
    "requests": "request",
    "upstream_cost_micros": "managed-mode upstream-cost (micro-USD)",
    "runs": "run",
}


@dataclass(frozen=True, slots=True)
class Ask:
    """What a caller wants to do next."""

    meter: MeterName
    amount: int = 1
    model: str | None = None
    mode: Mode = "managed"
    key_mode: KeyMode = "live"
    counted: bool = False  # `runs`: the run is already counted in this billing window


@dataclass(frozen=True, slots=True)
class Context:
    """Everything known about the org at `now`."""

    plan: Plan
    subscription: Subscription
    window: Window
    used: Used
    now: datetime
    default_model: str | None = None
    # The meter's own cap is left to the worker that owns the org, which decides it in log
    # order against its exact figures and the reservations held (tally.domain.reservations).
    sequenced: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int
    code: str | None
    message: str
    limit: int | None = None
    used: int | None = None
    remaining: int | None = None
    reset_at: datetime | None = None
    retry_after: int | None = None


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_until(t: datetime, now: datetime) -> int:
    return max(1, math.ceil((t - now).total_seconds()))


def _refuse(
    status: int,
    code: str,
    message: str,
    *,
    limit: int | None = None,
    used: int | None = None,
    remaining: int | None = None,
    reset_at: datetime | None = None,
    retry_after: int | None = None,
) -> Decision:
    return Decision(False, status, code, message, limit, used, remaining, reset_at, retry_after)


def _standing(ctx: Context) -> Decision | None:
    sub, plan = ctx.subscription, ctx.plan
    block = sub.block(ctx.now)
    if block == "past_due":
        return _refuse(
            402,
            "payment_required",
            f"payment for the {plan.display_name} plan is past due: new runs are paused until "
            "the payment method is updated (or the org moves to the free plan); "
            "usage and quota reads keep working",
        )
    if block == "trial_ended":
        assert sub.trial_ends_at is not None
        return _refuse(
            402,
            "payment_required",
            f"the {plan.display_name} trial ended at {_stamp(sub.trial_ends_at)}: add a payment "
            "method or downgrade to the free plan to resume runs",
        )
    return None


def _model(ask: Ask, ctx: Context) -> Decision | None:
    plan = ctx.plan
    if ask.meter not in LLM_METERS and ask.model is None:
        return None
    if ask.mode == "byok":
        if plan.byok:
            return None  # the org's own provider key: no whitelist
        return _refuse(
            403,
            "plan_limit_error",
            f"BYOK is not available on the {plan.display_name} plan: upgrade to a plan that "
            "offers it (GET /api/v2/plans) or send the request in managed mode",
        )
    allowed = plan.managed_models
    model = ask.model or ctx.default_model
    if allowed is None or model is None or model in allowed:
        return None
    names = ", ".join(allowed) or "none"
    way_out = (
        "switch to BYOK to use any model on your provider key"
        if plan.byok
        else "upgrade to a plan with BYOK to use any model on your provider key"
    )
    if ask.model is None:
        return _refuse(
            403,
            "plan_limit_error",
            f"the request names no model and the workspace default model {model!r} is not "
            f"available in managed mode on the {plan.display_name} plan (allowed: {names}): "
            "fix workspace.default_model in the dashboard (PUT /api/v2/workspace), name an "
            f"allowed model, or {way_out}",
        )
    return _refuse(
        403,
        "plan_limit_error",
        f"model {model!r} is not available in managed mode on the {plan.display_name} plan "
        f"(allowed: {names}): use an allowed model or {way_out}",
    )


def _monthly(ask: Ask, ctx: Context, limit: int | None, used: int) -> Decision | None:
    if limit is None or used + ask.amount <= limit:
        return None
    end = ctx.window.end
    return _refuse(
        429,
        "billing_limit_reached",
        f"the {_NOUN[ask.meter]} allowance of the {ctx.plan.display_name} plan is used up: "
        f"{used} of {limit} this period, {ask.amount} more asked; it resets at {_stamp(end)}, "
        "or upgrade to lift it now",
        limit=limit,
        used=used,
        remaining=max(limit - used, 0),
        reset_at=end,
    )


def _budget(ask: Ask, ctx: Context, used: int) -> Decision | None:
    budget = ctx.plan.upstream_cost_micros_per_month
    if ask.meter not in LLM_METERS or ask.mode != "managed" or budget is None or used < budget:
        return None
    end = ctx.window.end
    return _refuse(
        429,
        "billing_limit_reached",
        f"the managed-mode upstream-cost budget of the {ctx.plan.display_name} plan is used up "
        f"({used} of {budget} micro-USD this period): switch to BYOK or upgrade to go on now, "
        f"or wait for the reset at {_stamp(end)}",
        limit=budget,
        used=used,
        remaining=0,
        reset_at=end,
    )


def _burst(ask: Ask, ctx: Context, per: str, limit: int | None, used: int) -> Decision | None:
    if limit is None or used + ask.amount <= limit:
        return None
    window = day_window(ctx.now) if per == "day" else minute_window(ctx.now)
    wait = _seconds_until(window.end, ctx.now)
    span = "UTC day" if per == "day" else "minute"
    return _refuse(
        429,
        "rate_limited",
        f"the per-{per} burst of the {ctx.plan.display_name} plan is reached: {used} of "
        f"{limit} requests this {span}; retry after {_stamp(window.end)} (in {wait} s) "
        "or upgrade for a higher burst",
        limit=limit,
        used=used,
        remaining=max(limit - used, 0),
        reset_at=window.end,
        retry_after=wait,
    )


def _sessions(ask: Ask, ctx: Context, active: int) -> Decision:
    limit = ctx.plan.concurrent_sessions
    held = active
    if limit is not None and held + ask.amount > limit and not ctx.sequenced:
        return _refuse(
            429,
            "concurrency_limit",
            f"{held} of {limit} concurrent sessions of the {ctx.plan.display_name} plan are in "
            "use: end a session and retry, or upgrade for more",
            limit=limit,
            used=held,
            remaining=max(limit - held, 0),
        )
    f = figures(limit, held)
    return Decision(True, 200, None, "allowed", f.limit, f.used, f.remaining)


def _unavailable() -> Decision:
    return _refuse(
        503,
        "quota_unavailable",
        "usage figures are still loading after a restart: retry in a second",
        retry_after=1,
    )


def _limit_of(meter: MeterName, plan: Plan) -> int | None:
    return {
        "tokens": plan.tokens_per_period,
        "tool_calls": plan.tool_calls_per_month,
        "requests": plan.requests_per_month,
        "upstream_cost_micros": plan.upstream_cost_micros_per_month,
        "sessions": plan.concurrent_sessions,
        "runs": plan.runs_per_month,
    }[meter]


def _used_of(meter: MeterName, used: Used) -> int | None:
    return {
        "tokens": used.tokens,
        "tool_calls": used.tool_calls,
        "requests": used.requests,
        "upstream_cost_micros": used.upstream_cost_micros,
        "sessions": used.sessions,
        "runs": used.runs,
    }[meter]


def decide(ask: Ask, ctx: Context) -> Decision:
    """Allow or refuse `ask` for the org described by `ctx`."""
    if ask.amount < 1:
        raise ValueError("amount must be at least 1")
    refusal = _standing(ctx) or _model(ask, ctx)
    if refusal is not None:
        return refusal
    limit, used = _limit_of(ask.meter, ctx.plan), _used_of(ask.meter, ctx.used)
    if ask.key_mode == "test":
        f = figures(limit, used)
        reset = None if ask.meter == "sessions" else ctx.window.end
        return Decision(
            True, 200, None, "allowed: test keys never count", f.limit, f.used, f.remaining, reset
        )
    if used is None:
        return _unavailable()
    if ask.meter == "runs" and ask.counted:
        f = figures(limit, used)
        return Decision(
            True,
            200,
            None,
            "allowed: the run is already counted this period",
            f.limit,
            f.used,
            f.remaining,
            ctx.window.end,
        )
    if ask.meter == "sessions":
        return _sessions(ask, ctx, used)
    refusal = None if ctx.sequenced else _monthly(ask, ctx, limit, used)
    if refusal is None and ask.meter in LLM_METERS and ask.mode == "managed":
        cost = ctx.used.upstream_cost_micros
        if cost is None and ctx.plan.upstream_cost_micros_per_month is not None:
            return _unavailable()
        refusal = _budget(ask, ctx, cost or 0)
    if refusal is None and ask.meter == "requests":
        u = ctx.used
        if u.requests_day is None or u.requests_minute is None:
            return _unavailable()
        refusal = _burst(ask, ctx, "day", ctx.plan.requests_per_day, u.requests_day)
        refusal = refusal or _burst(
            ask, ctx, "minute", ctx.plan.requests_per_minute, u.requests_minute
        )
    if refusal is not None:
        return refusal
    f = figures(limit, used)
    return Decision(True, 200, None, "allowed", f.limit, f.used, f.remaining, ctx.window.end)


def from_worker(ask: Ask, ctx: Context, limit: int, used: int, allowed: bool) -> Decision:
    """The answer to a strict check, from the decision of the worker that owns the org
    (tally.domain.reservations): `used` is the figure it decided on, used plus held."""
    reset = None if ask.meter == "sessions" else ctx.window.end
    if allowed:
        f = figures(limit, used)
        return Decision(True, 200, None, "allowed", f.limit, f.used, f.remaining, reset)
    plain = replace(ctx, sequenced=False)
    refusal = (
        _sessions(ask, plain, used)
        if ask.meter == "sessions"
        else _monthly(ask, plain, limit, used)
    )
    if refusal is None or refusal.allowed:  # the plan changed between the two looks
        return _refuse(
            429,
            "concurrency_limit" if ask.meter == "sessions" else "billing_limit_reached",
            f"{used} of {limit} is in use or held: retry once a reservation is settled or "
            "lapses, or upgrade",
            limit=limit,
            used=used,
            remaining=max(limit - used, 0),
            reset_at=reset,
        )
    return refusal
