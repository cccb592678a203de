"""The alert evaluator of an API process, beside its requests and off the worker's path.

Every `alerts_interval_s` it reads each org's meters from the in-memory counter table (the
quota overview: no ClickHouse), applies the rules in force, and fires what holds and has
not fired (an id the book knows). Credit balances are read from the store less often. A
fired alert is stored (`AlertBook.fire`), handed to the webhook dispatcher and published on
`usage.alerts` keyed by org; what could not be published is published again later.

Why not a faust agent with a Table of what fired: the fired set must outlive the embedded
broker, whose log (and so a Table's changelog) is in memory only, so it is kept in
ClickHouse whatever runs the rules; and the rules need each org's plan and billing window,
which the API process holds. See README, "Alerts".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer

from api import figures
from api.accounts import account
from api.alerts.book import AlertBook
from api.alerts.dispatcher import Dispatcher, Policy
from api.alerts.ownership import Ownership
from api.ledger import CreditLedger
from api.state import Services
from tally.config import ALERTS_TOPIC
from tally.domain import alerts as a
from tally.domain.alerts import Alert
from tally.domain.quota import overview
from tally.kafka_clients import stop_client

log = logging.getLogger("tally.alerts")

CREDITS_EVERY = 20  # ticks between credit balance reads (they query the store)
# At most this much of each tick goes to evaluating orgs; the rest waits for the next tick,
# from where this one stopped. Under `tally up` the worker shares the process: alerts take
# at most ~5% of a core at the default interval, whatever the number of busy orgs (about
# 0.2 ms per org whose counters moved: 10,000 busy orgs are all evaluated within ~40 s).
BUDGET_S = 0.05


def _now() -> datetime:
    return datetime.now(UTC)


class Alerting:
    """Rules, evaluation, storage, publication and delivery of an API process's alerts."""

    def __init__(
        self, svc: Services, clock: Callable[[], datetime] = _now, sole: bool = False
    ) -> None:
        s = svc.settings
        self.svc = svc
        self.clock = clock
        self.book = AlertBook(svc.store)
        policy = Policy(
            s.webhook_backoff_s,
            timedelta(seconds=s.webhook_retry_for_s),
            timedelta(seconds=s.webhook_disable_after_s),
            s.webhook_allow_private,
        )
        assert s.bootstrap_servers is not None
        self.ownership = Ownership(
            s.bootstrap_servers, f"{s.group_id}-alerts", s.partitions, s.session_timeout_ms, sole
        )
        self.dispatcher = Dispatcher(
            self.book, policy, self.fire, lambda: self.clock(), self.ownership.owns
        )
        self.interval_s = s.alerts_interval_s
        self.refresh_every = max(1, round(s.registry_refresh_s / s.alerts_interval_s))
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._credits_ledger = CreditLedger(svc.store, svc.topup_lock)
        # Per org, what its last evaluation was made of: an org none of whose inputs moved
        # is not evaluated again (a tick costs little more than a dict lookup per org).
        self._seen: dict[str, tuple[object, ...]] = {}
        self._cursor = 0

    async def start(self) -> None:
        await self.book.load(self.clock())
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.svc.settings.bootstrap_servers, acks="all"
        )
        await self._producer.start()
        await self.ownership.start()
        await self.dispatcher.start()
        self._task = asyncio.create_task(self._run(), name="tally-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.dispatcher.stop()
        await self.ownership.stop()
        if self._producer is not None:
            await stop_client(self._producer, 10)
            self._producer = None

    async def fire(self, x: Alert) -> None:
        """Store `x` once, queue its deliveries, publish it."""
        if x.id in self.book.fired:
            return
        self.dispatcher.enqueue(await self.book.fire(x))
        await self._publish(x)

    async def _publish(self, x: Alert) -> None:
        if self._producer is None:
            return
        try:
            value = orjson.dumps(x.payload())
            await self._producer.send_and_wait(ALERTS_TOPIC, value, key=x.org_id.encode())
            await self.book.published(x)
        except Exception as exc:  # published again at the next refresh
            log.warning("alert %s not published yet: %r", x.id, exc)

    async def _run(self) -> None:
        tick = 0
        while True:
            try:
                if tick % self.refresh_every == 0 and tick:
                    await self.book.load(self.clock())
                    await self.dispatcher.load()
                    for x in await self.book.unpublished():
                        await self._publish(x)
                await self.evaluate(credits=tick % CREDITS_EVERY == 0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert evaluation failed; retrying")
            tick += 1
            await asyncio.sleep(self.interval_s)

    async def evaluate(self, credits: bool = False) -> None:
        """One pass over every org: fire what holds and has not fired."""
        svc, now = self.svc, self.clock()
        if not svc.counters.ready.is_set():
            return
        balances = await self._balances() if credits else {}
        orgs = list(svc.registry.orgs)
        deadline = time.perf_counter() + BUDGET_S
        start = self._cursor % len(orgs) if orgs else 0
        for i in range(len(orgs)):
            org_id = orgs[(start + i) % len(orgs)]
            if not self.ownership.owns(org_id):
                continue
            inputs = self._inputs(org_id, now)
            if org_id not in balances and self._seen.get(org_id) == inputs:
                continue
            for x in self._alerts_of(org_id, now, balances):
                if x.id not in self.book.fired:
                    await self.fire(x)
            self._seen[org_id] = inputs
            if time.perf_counter() > deadline:
                self._cursor = start + i + 1  # the next tick goes on from here
                return

    def _inputs(self, org_id: str, now: datetime) -> tuple[object, ...]:
        """Everything an org's usage and subscription alerts depend on. Time counts by the
        minute: the shortest window (the request burst) and every window end turn on one."""
        reg = self.svc.registry
        return (
            self.ownership.generation,
            self.svc.counters.changes(org_id),
            reg.generation,
            reg.accounts.generation,
            self.book.generation,
            int(now.timestamp() // 60),
        )

    def _alerts_of(self, org_id: str, now: datetime, balances: dict[str, int]) -> list[Alert]:
        svc = self.svc
        acct = account(svc.registry, svc.plans, org_id, now)
        o = overview(
            acct.plan, acct.window, now, figures.used(svc.counters, org_id, acct.window, now)
        )
        figs = list(a.org_figures(o))
        rules = a.in_force(a.default_rules(o), self.book.rules.get(org_id, []))
        open_alerts = [x for x in self.book.open.values() if x.org_id == org_id]
        sub = acct.subscription
        found = [
            *a.crossings(org_id, rules, figs, now),
            *a.resolutions(open_alerts, rules, figs, now),
            *a.subscription_alerts(
                org_id, rules, sub.status, sub.trial_ends_at, self._past_due_since(org_id, now), now
            ),
        ]
        if org_id in balances:
            found += a.credit_alerts(org_id, rules, balances[org_id], True, acct.window, now)
        return found

    def _past_due_since(self, org_id: str, now: datetime) -> datetime | None:
        """When the status in force turned past due (None unless it is past due)."""
        changes = self.svc.registry.accounts.history(org_id)
        last = [c for c in changes if c.status is not None and c.effective_at <= now][-1:]
        return last[0].effective_at if last and last[0].status == "past_due" else None

    async def _balances(self) -> dict[str, int]:
        """The credit balance of every org with a credit account (store reads)."""
        rows = await self.svc.store.query("SELECT DISTINCT org_id FROM credit_topups")
        out = {}
        for (org_id,) in rows:
            if org_id in self.svc.registry.orgs:
                out[org_id] = (await self._credits_ledger.account(org_id)).balance_micros
        return out
