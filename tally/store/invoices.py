"""SQL for invoices (migrations/013_invoices.sql): pure functions returning `(sql, params)`.

Every read takes the first close stored for a period and ignores rows that raced it.
"""

from __future__ import annotations

from tally.store.queries import Query

COLUMNS = ("org_id", "period_start", "invoice_id", "request_id", "created_at", "body")
STATUS_COLUMNS = ("org_id", "invoice_id", "status", "at", "request_id")

_WINNER = "(created_at, request_id)"


def stored(org_id: str) -> Query:
    """An org's invoices, oldest period first: `(invoice_id, body, created_at)`."""
    sql = (
        f"SELECT argMin(invoice_id, {_WINNER}), argMin(body, {_WINNER}), min(created_at)"
        " FROM invoices WHERE org_id = {org:String}"
        " GROUP BY period_start ORDER BY period_start"
    )
    return sql, {"org": org_id}


def latest_periods() -> Query:
    """The start of each org's newest invoiced period: `(org_id, period_start)`."""
    return "SELECT org_id, max(period_start) FROM invoices GROUP BY org_id", {}


def statuses(org_id: str) -> Query:
    """The status an admin last set on each of an org's invoices: `(invoice_id, status)`."""
    sql = (
        "SELECT invoice_id, argMax(status, (at, request_id)) FROM invoice_status"
        " WHERE org_id = {org:String} GROUP BY invoice_id"
    )
    return sql, {"org": org_id}
