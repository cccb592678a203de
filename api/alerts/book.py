"""What the alerts of an API process know, kept in the store and served from memory: each
org's rules, the webhook endpoints, the alerts that fired (by id) and those still open.

Firing an alert writes, in this order: its outbox rows (one per endpoint that takes its
type), then the alert row. A crash between the two leaves an alert not yet fired, which the
next evaluation fires again under the same id: the outbox rows come back at version 0 and
never hide what a delivery wrote since. Once the alert row is stored, its id is fired for
every process that loads the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tally import metrics
from tally.domain import alerts as a
from tally.domain.alerts import Alert, Rule
from tally.store import Store
from tally.store import alerts as sql

log = logging.getLogger("tally.alerts")

KEEP_OPEN = timedelta(days=62)  # alerts of windows that ended longer ago are settled


@dataclass(frozen=True, slots=True)
class Endpoint:
    org_id: str
    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    state: str  # enabled | disabled | deleted
    failing_since: datetime | None
    created_at: datetime
    version: int


def utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def version_of(now: datetime) -> int:
    return int(now.timestamp() * 1_000_000)


def alert_row(x: Alert, published: int) -> list[Any]:
    return [
        x.org_id, x.id, x.type, x.at, x.rule, x.meter, x.scope, x.window_start, x.window_end,
        x.threshold, x.limit, x.used, published, published,
    ]  # fmt: skip


def alert_of(row: tuple[Any, ...]) -> Alert:
    id_, type_, org, at, rule, meter, scope, ws, we, n, limit, used = row[:12]
    return Alert(
        id_, type_, org, utc(at), rule, meter, scope, utc(ws), utc(we), int(n),
        None if limit is None else int(limit), int(used),
    )  # fmt: skip


def rules_of(text: str) -> list[Rule]:
    return [Rule(**r) for r in orjson.loads(text)]


def rules_json(rules: list[Rule]) -> str:
    fields = ("meter", "at", "percent", "below", "days")
    return orjson.dumps(
        [{k: getattr(r, k) for k in fields if getattr(r, k) is not None} for r in rules]
    ).decode()


class AlertBook:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.rules: dict[str, list[Rule]] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.fired: set[str] = set()
        self.open: dict[str, Alert] = {}  # reached, not yet resolved
        self.generation = 0  # moves whenever rules or open alerts may have changed

    async def load(self, now: datetime) -> None:
        """Merge what the store holds (this replica's writes and every other's)."""
        rules = {org: rules_of(text) for org, text in await self.store.query(*sql.rules())}
        endpoints = {}
        for row in await self.store.query(*sql.endpoints()):
            e = Endpoint(
                row[0], row[1], row[2], tuple(row[3]), row[4], row[5],
                None if row[6] is None else utc(row[6]), utc(row[7]), int(row[8]),
            )  # fmt: skip
            endpoints[e.id] = e
        stored = [alert_of(r) for r in await self.store.query(*sql.alerts_since(now - KEEP_OPEN))]
        before = (dict(self.rules), set(self.open))
        self.rules.update(rules)
        for e in endpoints.values():
            mine = self.endpoints.get(e.id)
            if mine is None or e.version >= mine.version:
                self.endpoints[e.id] = e
        self.fired |= {x.id for x in stored}
        resolved = {x.id for x in stored if x.type == a.THRESHOLD_RESOLVED}
        for x in stored:
            if x.type == a.THRESHOLD_REACHED and a.resolved_id(x.id) not in resolved:
                self.open.setdefault(x.id, x)
        for id_ in [i for i in self.open if a.resolved_id(i) in self.fired]:
            del self.open[id_]
        if before != (self.rules, set(self.open)):
            self.generation += 1

    async def set_rules(self, org_id: str, rules: list[Rule], now: datetime) -> None:
        row = [org_id, version_of(now), now, rules_json(rules)]
        await self.store.insert("alert_rules", [row], sql.RULE_COLUMNS)
        self.rules[org_id] = rules
        self.generation += 1

    async def save_endpoint(self, e: Endpoint) -> Endpoint:
        row = [
            e.org_id, e.id, e.url, list(e.events), e.secret, e.state, e.failing_since,
            e.created_at, e.version,
        ]  # fmt: skip
        await self.store.insert("webhook_endpoints", [row], sql.ENDPOINT_COLUMNS)
        if e.state == "deleted":
            self.endpoints.pop(e.id, None)
        else:
            self.endpoints[e.id] = e
        return e

    async def update_endpoint(self, e: Endpoint, now: datetime, **changes: Any) -> Endpoint:
        version = max(version_of(now), e.version + 1)
        return await self.save_endpoint(replace(e, version=version, **changes))

    def org_endpoints(self, org_id: str) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.org_id == org_id]

    def targets(self, x: Alert) -> list[Endpoint]:
        """The enabled endpoints of the alert's org that take its type."""
        return [
            e for e in self.org_endpoints(x.org_id) if e.state == "enabled" and x.type in e.events
        ]

    async def fire(self, x: Alert) -> list[list[Any]]:
        """Store the alert once: its outbox rows first, then the alert. Returns the rows."""
        body = orjson.dumps(x.payload()).decode()
        outbox = [
            [x.org_id, e.id, x.id, x.type, body, x.at, "pending", 0, None, x.at, 0]
            for e in self.targets(x)
        ]
        if outbox:
            await self.store.insert("webhook_deliveries", outbox, sql.DELIVERY_COLUMNS)
        await self.store.insert("alerts", [alert_row(x, 0)], sql.ALERT_COLUMNS)
        self.fired.add(x.id)
        metrics.alerts_fired.labels(x.type).inc()
        self.generation += 1
        if x.type == a.THRESHOLD_REACHED:
            self.open[x.id] = x
        elif x.type == a.THRESHOLD_RESOLVED:
            self.open = {k: v for k, v in self.open.items() if a.resolved_id(k) != x.id}
        log.info("alert %s %s fired (%s)", x.type, x.id, x.rule, extra={"org": x.org_id})
        return outbox

    async def published(self, x: Alert) -> None:
        await self.store.insert("alerts", [alert_row(x, 1)], sql.ALERT_COLUMNS)

    async def unpublished(self) -> list[Alert]:
        return [alert_of(r) for r in await self.store.query(*sql.unpublished())]

    async def history(self, org_id: str, limit: int) -> list[Alert]:
        return [alert_of(r) for r in await self.store.query(*sql.org_alerts(org_id, limit))]
