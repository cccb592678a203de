"""SQL of alerts, rules, webhook endpoints and the outbox: `(sql, params)` builders.

Every value travels as a bound parameter. The tables (migration 012) are versioned: reads
take the newest version of each row with FINAL.
"""

from __future__ import annotations

from datetime import datetime

from tally.store.queries import Query

ALERT_COLUMNS = (
    "org_id", "alert_id", "type", "at", "rule", "meter", "scope", "window_start",
    "window_end", "threshold", "limit_value", "used", "published", "version",
)  # fmt: skip
ENDPOINT_COLUMNS = (
    "org_id", "endpoint_id", "url", "events", "secret", "state", "failing_since",
    "created_at", "version",
)  # fmt: skip
DELIVERY_COLUMNS = (
    "org_id", "endpoint_id", "msg_id", "type", "payload", "created_at", "status", "attempts",
    "first_attempt_at", "next_attempt_at", "version",
)  # fmt: skip
ATTEMPT_COLUMNS = ("org_id", "endpoint_id", "msg_id", "attempt", "at", "status_code", "error")
RULE_COLUMNS = ("org_id", "seq", "recorded_at", "rules")

_ALERT_SELECT = (
    "SELECT alert_id, type, org_id, at, rule, meter, scope, window_start, window_end,"
    " threshold, limit_value, used, published FROM alerts FINAL"
)


def rules() -> Query:
    """Every org's newest own rules."""
    return "SELECT org_id, argMax(rules, seq) FROM alert_rules GROUP BY org_id", {}


def alerts_since(since: datetime) -> Query:
    """Alerts whose window ends after `since`: the ones that may still fire or resolve."""
    return _ALERT_SELECT + " WHERE window_end >= {s:DateTime64(3, 'UTC')}", {"s": since}


def unpublished() -> Query:
    return _ALERT_SELECT + " WHERE published = 0 ORDER BY at", {}


def org_alerts(org_id: str, limit: int) -> Query:
    """An org's alerts, newest first."""
    sql = _ALERT_SELECT + " WHERE org_id = {o:String} ORDER BY at DESC, alert_id LIMIT {n:UInt32}"
    return sql, {"o": org_id, "n": limit}


def endpoints() -> Query:
    """Every endpoint not deleted, each in its newest version."""
    sql = (
        "SELECT org_id, endpoint_id, url, events, secret, state, failing_since, created_at,"
        " version FROM webhook_endpoints FINAL WHERE state != 'deleted'"
        " ORDER BY org_id, created_at"
    )
    return sql, {}


_DELIVERY_SELECT = (
    "SELECT org_id, endpoint_id, msg_id, type, payload, created_at, status, attempts,"
    " first_attempt_at, next_attempt_at, version FROM webhook_deliveries FINAL"
)


def pending_deliveries() -> Query:
    """The outbox: every delivery still to be made."""
    return _DELIVERY_SELECT + " WHERE status = 'pending' ORDER BY created_at", {}


def endpoint_deliveries(org_id: str, endpoint_id: str, limit: int) -> Query:
    sql = (
        _DELIVERY_SELECT + " WHERE org_id = {o:String} AND endpoint_id = {e:String}"
        " ORDER BY created_at DESC, msg_id LIMIT {n:UInt32}"
    )
    return sql, {"o": org_id, "e": endpoint_id, "n": limit}


def delivery(org_id: str, endpoint_id: str, msg_id: str) -> Query:
    sql = (
        _DELIVERY_SELECT
        + " WHERE org_id = {o:String} AND endpoint_id = {e:String} AND msg_id = {m:String}"
    )
    return sql, {"o": org_id, "e": endpoint_id, "m": msg_id}


def attempts(org_id: str, endpoint_id: str, msg_ids: list[str]) -> Query:
    sql = (
        "SELECT msg_id, attempt, at, status_code, error FROM webhook_attempts"
        " WHERE org_id = {o:String} AND endpoint_id = {e:String} AND msg_id IN {m:Array(String)}"
        " ORDER BY msg_id, attempt"
    )
    return sql, {"o": org_id, "e": endpoint_id, "m": msg_ids}
