"""Scopes, the admin actor id, and the SQL of the audit trail and the purge (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.access import SCOPES
from schemas.api import KeyCreate
from tally.domain.keys import admin_actor, hash_key, normalise_scopes
from tally.store import audit, purge


def test_scopes_are_kept_in_catalogue_order_once_and_unknown_ones_refused():
    assert normalise_scopes(["quota:read", "events:write", "quota:read"]) == (
        "events:write",
        "quota:read",
    )
    with pytest.raises(ValueError, match="unknown scope"):
        normalise_scopes(["billing:write"])


def test_a_key_asked_for_without_scopes_gets_every_scope():
    assert KeyCreate().scopes == list(SCOPES)
    assert len(SCOPES) == 5


def test_the_admin_actor_is_a_hash_prefix_never_the_key():
    actor = admin_actor("a-long-admin-secret")
    assert actor == "admin:" + hash_key("a-long-admin-secret")[:12]
    assert "secret" not in actor
    assert admin_actor("another") != actor


def test_the_audit_query_binds_every_filter():
    start = datetime(2026, 12, 1, tzinfo=UTC)
    sql, params = audit.trail_query("acme'--", "org.closed", start, None, 10)
    assert "acme" not in sql and "{org:String}" in sql and "{action:String}" in sql
    assert params == {"org": "acme'--", "action": "org.closed", "start": start, "limit": 10}
    sql, params = audit.trail_query(None, None, None, None, 5)
    assert "WHERE" not in sql and params == {"limit": 5}


def test_an_unknown_audit_action_is_refused():
    with pytest.raises(ValueError, match="unknown audit action"):
        import asyncio

        asyncio.run(audit.record(None, actor="a", action="org.renamed", org_id="x"))  # type: ignore[arg-type]


def test_the_purge_deletes_by_a_bound_org_from_catalogue_names_only():
    sql, params = purge.delete("usage_daily", "acme")
    assert sql == "DELETE FROM usage_daily WHERE org_id = {org:String}"
    assert params == {"org": "acme"}
    with pytest.raises(ValueError):
        purge.delete("events; DROP TABLE orgs", "acme")
    sql, params = purge.tables_query()
    assert "audit_log" in params["kept"] and "MaterializedView" in sql
