"""Where the money went: breakdowns, the daily series, runs and their line items.

Served from the ClickHouse rollups, always scoped to the org of the key that asks.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Response

from api.accounts import account
from api.auth import require_scope, services
from api.errors import ApiError
from api.registry import ApiKey
from api.state import Services
from schemas.access import BILLING_READ
from schemas.api import ErrorBody
from schemas.usage import (
    AgentRuns,
    Breakdown,
    DailyPoint,
    DailySeries,
    Figures,
    RunLineItem,
    RunSummary,
    RunUsage,
)
from tally.domain import reports
from tally.domain.reports import DayRange, InvalidParameter
from tally.domain.usage import LINE_ITEMS
from tally.store import reports as sql

MAX_ROWS = 50_000

router = APIRouter(
    prefix="/api/v2",
    tags=["usage"],
    responses={
        400: {"model": ErrorBody, "description": "A parameter is wrong; the message says which"},
        401: {"model": ErrorBody, "description": "Missing or unknown key"},
    },
)

# What the routes check themselves (400 `invalid_parameter`, with the reason), stated in
# the document too: `json_schema_extra` documents a constraint without FastAPI enforcing it
# a second time as a 422. api/openapi.py states that `from` and `to` go together.
_TOGETHER = " Give both `from` and `to`, or neither for the org's current billing period."
FROM = Query(
    None,
    alias="from",
    description="First UTC day counted, YYYY-MM-DD." + _TOGETHER,
    json_schema_extra={"format": "date"},
)
TO = Query(
    None,
    description="First UTC day NOT counted, YYYY-MM-DD: after `from`, at most"
    f" {reports.MAX_RANGE_DAYS} days later." + _TOGETHER,
    json_schema_extra={"format": "date"},
)
KEY_MODE = Query(
    None,
    description="live (default: what is billed), test or all.",
    json_schema_extra={"enum": list(reports.KEY_MODES)},
)
_NAMES = "|".join(reports.GROUPS)
_IDENTIFIER = {"minLength": 1, "maxLength": 128}


def current_period(svc: Services, org_id: str, now: datetime | None = None) -> DayRange:
    """The org's current billing period, as days: the default range of every report."""
    window = account(svc.registry, svc.plans, org_id, now or datetime.now(UTC)).window
    return DayRange(window.start.date(), window.end.date())


def _bad(exc: InvalidParameter) -> ApiError:
    return ApiError(400, "invalid_parameter", str(exc))


@router.get("/usage/breakdown", response_model=Breakdown)
async def breakdown(
    from_: str | None = FROM,
    to: str | None = TO,
    group_by: str | None = Query(
        None,
        description="Comma-separated dimensions, each at most once: day, agent, line_item, item"
        " (model, connector or storage kind), key_mode, mode. Empty: the total only.",
        json_schema_extra={"pattern": f"^(({_NAMES})(,({_NAMES}))*)?$"},
    ),
    agent_id: str | None = Query(
        None, description="Only this agent.", json_schema_extra=_IDENTIFIER
    ),
    line_item: str | None = Query(
        None,
        description="Only this line item: llm, tool_calls, requests, storage, sessions.",
        json_schema_extra={"enum": list(LINE_ITEMS)},
    ),
    key_mode: str | None = KEY_MODE,
    key: ApiKey = Depends(require_scope("usage:read")),
    svc: Services = Depends(services),
) -> Response:
    """Quantities and cost per group over a range of days, and the total.

    The rows of any grouping add up to `total`, figure by figure, to the micro-unit.
    """
    try:
        span = reports.day_range(from_, to, current_period(svc, key.org_id))
        groups = reports.group_by(group_by)
        modes = reports.key_modes(key_mode)
        only_item = reports.line_item(line_item)
        only_agent = reports.identifier("agent_id", agent_id)
    except InvalidParameter as exc:
        raise _bad(exc) from None
    filters: dict[str, Any] = {"agent_id": only_agent, "line_item": only_item}
    # One read: the total of a grouping is the sum of its rows, so both come from the same
    # snapshot of the store (and a second query would cost as much again: see
    # docs/benchmarks.md).
    limit = MAX_ROWS + 1 if groups else None
    rows = await svc.store.query(
        *sql.breakdown(key.org_id, span, groups, modes, **filters, limit=limit)
    )
    if len(rows) > MAX_ROWS:
        raise ApiError(
            400,
            "too_many_rows",
            f"more than {MAX_ROWS} groups: narrow the range or group by fewer dimensions",
        )
    split, total = reports.split_rows(groups, rows)
    day = groups.index("day") if "day" in groups else -1
    out = []
    for values, figures in split if groups else []:
        group = dict(zip(groups, values, strict=True))  # text, but for the day (a date)
        if day >= 0:
            group["day"] = _day(values[day]).isoformat()
        out.append({**_priced(key, figures), "group": group})
    body = {
        "from": span.start.isoformat(),
        "to": span.end.isoformat(),
        "group_by": list(groups),
        "key_mode": _mode_name(modes),
        "rows": out,
        "total": _priced(key, total),
    }
    # Written out directly in Breakdown's layout: for a thousand rows and more, building and
    # validating the response model took as long as the query (docs/benchmarks.md).
    # split_rows has checked that every figure is an integer.
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/usage/daily", response_model=DailySeries)
async def daily(
    from_: str | None = FROM,
    to: str | None = TO,
    key_mode: str | None = KEY_MODE,
    key: ApiKey = Depends(require_scope("usage:read")),
    svc: Services = Depends(services),
) -> DailySeries:
    """One point per day of the range, days without usage included as zeros: for a chart."""
    try:
        span = reports.day_range(from_, to, current_period(svc, key.org_id))
        modes = reports.key_modes(key_mode)
    except InvalidParameter as exc:
        raise _bad(exc) from None
    rows = await svc.store.query(*sql.breakdown(key.org_id, span, ("day",), modes))
    by_day: dict[date, dict[str, int]] = {}
    for row in rows:
        values, figures = reports.split_row(("day",), row)
        by_day[_day(values["day"])] = figures
    points = [DailyPoint(day=d, **_priced(key, f)) for d, f in reports.fill_days(span, by_day)]
    total = _priced(key, reports.total_of(by_day.values()))
    return DailySeries(
        from_=span.start,
        to=span.end,
        key_mode=_mode_name(modes),
        days=points,
        total=Figures(**total),
    )


@router.get(
    "/runs/{run_id}/usage",
    response_model=RunUsage,
    responses={404: {"model": ErrorBody, "description": "No usage recorded for this run"}},
)
async def run_usage(
    run_id: str = Path(json_schema_extra=_IDENTIFIER),
    key: ApiKey = Depends(require_scope("usage:read")),
    svc: Services = Depends(services),
) -> RunUsage:
    """The line items of one execution: LLM cost by model with its tokens, tool calls by
    connector, storage by kind; live and test traffic both shown, each line marked."""
    if not 1 <= len(run_id) <= 128:
        raise ApiError(400, "invalid_parameter", "run_id: must be 1 to 128 characters")
    rows = await svc.store.query(*sql.run_line_items(key.org_id, run_id))
    if not rows:
        raise ApiError(404, "not_found", f"no usage recorded for run {run_id!r} in this org")
    lines = [_line(row) for row in rows]
    total = _priced(key, reports.total_of(_line_figures(line) for line in lines))
    if BILLING_READ not in key.scopes:
        lines = [line.model_copy(update={"cost_micros": None}) for line in lines]
    return RunUsage(
        run_id=run_id,
        agent_ids=sorted({line.agent_id for line in lines}),
        first_ts=min(line.first_ts for line in lines),
        last_ts=max(line.last_ts for line in lines),
        line_items=lines,
        total=Figures(**total),
    )


@router.get("/usage/agents/{agent_id}/runs", response_model=AgentRuns)
async def agent_runs(
    agent_id: str = Path(json_schema_extra=_IDENTIFIER),
    from_: str | None = FROM,
    to: str | None = TO,
    key_mode: str | None = KEY_MODE,
    limit: int = Query(100, ge=1, le=1000, description="At most this many runs, newest first."),
    key: ApiKey = Depends(require_scope("usage:read")),
    svc: Services = Depends(services),
) -> AgentRuns:
    """The runs of one agent that started in the range, each with its figures and cost.

    Usage recorded without a run_id belongs to no run and is not listed here.
    """
    try:
        span = reports.day_range(from_, to, current_period(svc, key.org_id))
        modes = reports.key_modes(key_mode)
        reports.identifier("agent_id", agent_id)
    except InvalidParameter as exc:
        raise _bad(exc) from None
    rows = await svc.store.query(*sql.agent_runs(key.org_id, agent_id, span, modes, limit + 1))
    runs = []
    for row in rows[:limit]:
        values, figures = reports.split_row(("run_id", "first_ts", "last_ts"), row)
        runs.append(
            RunSummary(
                run_id=str(values["run_id"]),
                first_ts=_utc(values["first_ts"]),
                last_ts=_utc(values["last_ts"]),
                **_priced(key, figures),
            )
        )
    return AgentRuns(
        agent_id=agent_id,
        from_=span.start,
        to=span.end,
        key_mode=_mode_name(modes),
        runs=runs,
        has_more=len(rows) > limit,
    )


def _priced(key: ApiKey, figures: dict[str, Any]) -> dict[str, Any]:
    """The figures as this key may see them: cost figures are billing data, so a key without
    `billing:read` gets quantities with `cost_micros: null` (docs/analytics.md)."""
    if BILLING_READ in key.scopes:
        return figures
    return {**figures, "cost_micros": None}


def _line(row: tuple[Any, ...]) -> RunLineItem:
    agent, line_item, item, mode, first, last, *figures = row
    names = (
        "events",
        "quantity",
        "billable",
        "cost_micros",
        "unpriced",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
    )
    return RunLineItem(
        agent_id=agent,
        line_item=line_item,
        item=item,
        key_mode=mode,
        first_ts=_utc(first),
        last_ts=_utc(last),
        **dict(zip(names, (int(f) for f in figures), strict=True)),
    )


def _line_figures(line: RunLineItem) -> dict[str, int]:
    """A run line item as report figures, so that a run totals like a breakdown does."""
    q = line.quantity
    per_item = {
        "tokens": q if line.line_item == "llm" else 0,
        "tool_calls": q if line.line_item == "tool_calls" else 0,
        "billable_tool_calls": line.billable if line.line_item == "tool_calls" else 0,
        "requests": q if line.line_item == "requests" else 0,
        "storage_byte_seconds": q if line.line_item == "storage" else 0,
    }
    return {
        "events": line.events,
        "input_tokens": line.input_tokens,
        "output_tokens": line.output_tokens,
        "cached_input_tokens": line.cached_input_tokens,
        "cost_micros": line.cost_micros or 0,
        "unpriced": line.unpriced,
        **per_item,
    }


def _mode_name(modes: tuple[str, ...]) -> Any:
    return next(name for name, value in reports.KEY_MODES.items() if value == modes)


def _day(value: object) -> date:
    if not isinstance(value, date):
        raise TypeError(f"expected a day, got {value!r}")
    return value


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
