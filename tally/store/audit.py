"""The audit trail: every admin action, appended to `audit_log` and never changed.

`record` is the one entry point for writing it; `trail_query` builds the read. Actors are ids,
never secrets: `tally.domain.keys.admin_actor` for the admin key.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.access import ACTIONS
from tally.store import Store

COLUMNS = ("at", "actor", "action", "org_id", "before", "after", "entry_id")
RETENTION_ACTOR = "tally:retention"  # the purge run by the retention sweep
OPS_ACTOR = "tally:ops"  # the purge run by `tally orgs purge` without an admin key


async def record(
    store: Store,
    *,
    actor: str,
    action: str,
    org_id: str,
    before: Any = None,
    after: Any = None,
    at: datetime | None = None,
) -> None:
    """Append one admin action. `before` and `after` are the state it changed, as plain JSON
    values (dicts of the fields that matter), `None` where there was none."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; one of {', '.join(ACTIONS)}")
    row = [
        at or datetime.now(UTC),
        actor,
        action,
        org_id,
        _json(before),
        _json(after),
        uuid.uuid4().hex,
    ]
    await store.insert("audit_log", [row], COLUMNS)


def trail_query(
    org_id: str | None,
    action: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> tuple[str, dict[str, Any]]:
    """The entries matching every given filter, oldest first; `end` is exclusive."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if org_id is not None:
        where.append("org_id = {org:String}")
        params["org"] = org_id
    if action is not None:
        where.append("action = {action:String}")
        params["action"] = action
    if start is not None:
        where.append("at >= {start:DateTime64(6, 'UTC')}")
        params["start"] = start
    if end is not None:
        where.append("at < {end:DateTime64(6, 'UTC')}")
        params["end"] = end
    sql = "SELECT at, actor, action, org_id, before, after FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY at, entry_id LIMIT {limit:UInt32}", params


def _json(value: Any) -> str:
    return "" if value is None else orjson.dumps(value, default=str).decode()


def loads(text: str) -> Any:
    """A `before` or `after` column back as JSON (`None` when empty)."""
    return orjson.loads(text) if text else None
