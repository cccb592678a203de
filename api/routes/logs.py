"""The call log: an org's events one by one, newest first, as far back as its plan keeps them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from api.accounts import account
from api.auth import require_scope, services
from api.errors import ApiError
from api.registry import ApiKey
from api.state import Services
from schemas.access import BILLING_READ
from schemas.api import ErrorBody
from schemas.calllog import LogEvent, LogPage
from schemas.events import EVENT_TYPES
from tally.domain import calllog, reports
from tally.domain.calllog import OutsideRetention
from tally.domain.reports import InvalidParameter
from tally.store import calllog as sql

router = APIRouter(
    prefix="/api/v2",
    tags=["logs"],
    responses={
        400: {
            "model": ErrorBody,
            "description": "A parameter is wrong (`invalid_parameter`), or the range starts"
            " before the plan's log retention (`outside_retention`, naming it)",
        },
        401: {"model": ErrorBody, "description": "Missing or unknown key"},
    },
)

_IDENTIFIER = {"minLength": 1, "maxLength": 128}


@router.get("/logs/events", response_model=LogPage)
async def events(
    type: str | None = Query(
        None, description="Only events of this type.", json_schema_extra={"enum": EVENT_TYPES}
    ),
    from_: str | None = Query(
        None,
        alias="from",
        description="First UTC day, YYYY-MM-DD; default: as far back as the plan keeps.",
        json_schema_extra={"format": "date"},
    ),
    to: str | None = Query(
        None,
        description="First UTC day NOT listed, YYYY-MM-DD, after `from`; default: up to now.",
        json_schema_extra={"format": "date"},
    ),
    agent_id: str | None = Query(None, json_schema_extra=_IDENTIFIER),
    run_id: str | None = Query(None, json_schema_extra=_IDENTIFIER),
    status: str | None = Query(
        None,
        description="`failed`: failed tool calls only; `success`: everything else.",
        json_schema_extra={"enum": list(calllog.STATUSES)},
    ),
    limit: int | None = Query(
        None,
        description=f"Events per page, 1 to {calllog.MAX_LIMIT}; default {calllog.DEFAULT_LIMIT}.",
        json_schema_extra={"minimum": 1, "maximum": calllog.MAX_LIMIT},
    ),
    cursor: str | None = Query(
        None,
        description="`next_cursor` of the previous page, with the same filters.",
        json_schema_extra={"pattern": calllog.CURSOR_PATTERN},
    ),
    key: ApiKey = Depends(require_scope("usage:read")),
    svc: Services = Depends(services),
) -> LogPage:
    """The org's events, newest first, each with its cost and whether it was billed.

    Pages are stable while events keep arriving: a walk from the first page to the last
    lists the events stored when the first page was read, each once; newer ones start the
    next walk.
    """
    now = datetime.now(UTC)
    retention = account(svc.registry, svc.plans, key.org_id, now).plan.log_retention_days
    try:
        if type is not None and type not in EVENT_TYPES:
            raise InvalidParameter("type", f"{type!r} is not one of {', '.join(EVENT_TYPES)}")
        span = calllog.span(from_, to, retention, now)
        filters = sql.Filters(
            type=type,
            agent_id=reports.identifier("agent_id", agent_id),
            run_id=reports.identifier("run_id", run_id),
            status=calllog.status(status),
        )
        size = calllog.limit(limit)
        position = calllog.decode_cursor(cursor) if cursor is not None else calllog.first_page(now)
    except OutsideRetention as exc:
        raise ApiError(400, "outside_retention", str(exc)) from None
    except InvalidParameter as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    rows = await svc.store.query(*sql.page(key.org_id, span, filters, position, size + 1))
    entries = [_entry(dict(zip(sql.COLUMNS, row, strict=True))) for row in rows[:size]]
    if BILLING_READ not in key.scopes:  # cost figures are billing data (docs/access.md)
        entries = [e.model_copy(update={"cost_micros": None}) for e in entries]
    following = None
    if len(rows) > size:
        last = entries[-1]
        following = calllog.Cursor(
            position.as_of_ms, calllog.epoch_ms(last.ts), last.event_id
        ).encode()
    return LogPage(events=entries, next_cursor=following)


def _entry(row: dict[str, Any]) -> LogEvent:
    kind, success = row["type"], int(row["success"])
    reason = calllog.not_billed(kind, row["key_mode"], success)
    ts = row["ts"]
    entry: dict[str, Any] = {
        "event_id": row["event_id"],
        "type": kind,
        "ts": ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC),
        "agent_id": row["agent_id"],
        "run_id": row["run_id"],
        "session_id": row["session_id"],
        "key_mode": row["key_mode"],
        "status": "failed" if calllog.failed(kind, success) else "success",
        "line_item": row["line_item"],
        "item": row["item"],
        "quantity": int(row["quantity"]),
        "billable": int(row["billable"]),
        "cost_micros": int(row["cost_micros"]),
        "priced": bool(row["priced"]),
        "billed": reason is None,
        "not_billed_reason": reason,
    }
    if kind == "llm.usage":
        entry.update(
            model=row["item"],
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cached_input_tokens=int(row["cached_input_tokens"]),
            mode=row["mode"],
        )
    elif kind == "gateway.request":
        entry.update(model=row["item"], mode=row["mode"], cache_hit=bool(row["cache_hit"]))
    elif kind == "tool.call":
        entry.update(connector=row["item"], tool=row["tool"])
    elif kind == "storage.usage":
        entry.update(storage_kind=row["item"])
    return LogEvent(**entry)
