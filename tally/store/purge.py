"""Purging an org's data: every table of the store that has an `org_id` column.

The tables are found in the store's own catalogue rather than listed here, so a table a
later migration adds is purged too. The audit trail is kept (it holds admin actions, no
usage data, and its `org.purged` entry is the record of the purge).
"""

from __future__ import annotations

from typing import Any

KEPT = ("audit_log",)


def tables_query() -> tuple[str, dict[str, Any]]:
    """The tables (not views) of the current database with an `org_id` column."""
    sql = (
        "SELECT c.table FROM system.columns AS c"
        " INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table"
        " WHERE c.database = currentDatabase() AND c.name = 'org_id'"
        " AND t.engine NOT IN ('View', 'MaterializedView')"
        " AND c.table NOT IN {kept:Array(String)} ORDER BY c.table"
    )
    return sql, {"kept": list(KEPT)}


def closed_query() -> tuple[str, dict[str, Any]]:
    """The orgs closed now (not restored, not yet purged)."""
    sql = "SELECT org_id FROM orgs GROUP BY org_id HAVING argMax(closed_at, version) IS NOT NULL"
    return sql, {}


def delete(table: str, org_id: str) -> tuple[str, dict[str, Any]]:
    """Delete the org's rows of `table` (a name from `tables_query`, never user input)."""
    if not table.replace("_", "").isalnum():
        raise ValueError(f"not a table name: {table!r}")
    return f"DELETE FROM {table} WHERE org_id = {{org:String}}", {"org": org_id}


def rows_query(table: str, org_id: str) -> tuple[str, dict[str, Any]]:
    """How many rows of the org `table` holds (0 after a purge)."""
    if not table.replace("_", "").isalnum():
        raise ValueError(f"not a table name: {table!r}")
    return f"SELECT count() FROM {table} WHERE org_id = {{org:String}}", {"org": org_id}
