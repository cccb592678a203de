"""Webhook delivery from the durable outbox (`webhook_deliveries`).

Every pending delivery is loaded from the store at start and at each refresh, so a restart
loses none. Each attempt is signed afresh (a new `webhook-timestamp`) under the same
`webhook-id`, written to the attempt log, and the delivery's new state stored with a higher
version. A failed attempt is retried with exponential backoff and jitter for
`webhook_retry_for_s` (24 h); an endpoint that has failed for `webhook_disable_after_s`
(3 days) is disabled, and a `webhook.endpoint_disabled` alert says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from api.alerts.book import AlertBook, Endpoint, utc
from api.alerts.targets import check_target
from tally import metrics
from tally.domain import webhooks
from tally.domain.alerts import Alert, endpoint_disabled
from tally.domain.webhooks import TargetRefused
from tally.store import alerts as sql

log = logging.getLogger("tally.webhooks")

TICK_S = 0.2
TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 16


@dataclass(frozen=True, slots=True)
class Delivery:
    org_id: str
    endpoint_id: str
    msg_id: str
    type: str
    payload: str
    created_at: datetime
    status: str  # pending | succeeded | failed
    attempts: int
    first_attempt_at: datetime | None
    next_attempt_at: datetime | None
    version: int

    @property
    def key(self) -> tuple[str, str]:
        return self.endpoint_id, self.msg_id

    def row(self) -> list[Any]:
        return [
            self.org_id, self.endpoint_id, self.msg_id, self.type, self.payload,
            self.created_at, self.status, self.attempts, self.first_attempt_at,
            self.next_attempt_at, self.version,
        ]  # fmt: skip


def delivery_of(row: tuple[Any, ...] | list[Any]) -> Delivery:
    org, ep, msg, type_, payload, created, status, n, first, next_at, version = row
    return Delivery(
        org, ep, msg, type_, payload, utc(created), status, int(n),
        None if first is None else utc(first), None if next_at is None else utc(next_at),
        int(version),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Policy:
    backoff_s: float
    retry_for: timedelta
    disable_after: timedelta
    allow_private: bool


class Dispatcher:
    """Sends what the outbox holds. `start()` / `stop()` own its task and its HTTP client."""

    def __init__(
        self,
        book: AlertBook,
        policy: Policy,
        fire: Callable[[Alert], Awaitable[None]],
        clock: Callable[[], datetime],
        owns: Callable[[str], bool],
    ) -> None:
        self.book = book
        self.policy = policy
        self.fire = fire
        self.clock = clock
        self.owns = owns  # whether this process delivers an org's messages
        self.pending: dict[tuple[str, str], Delivery] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._attempts: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False)
        await self.load()
        self._task = asyncio.create_task(self._run(), name="tally-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for t in list(self._attempts):
            t.cancel()
        await asyncio.gather(*self._attempts, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def load(self) -> None:
        """Merge the store's pending deliveries (a restart's, another replica's redeliver)."""
        for row in await self.book.store.query(*sql.pending_deliveries()):
            self.add(delivery_of(row))

    def add(self, d: Delivery) -> None:
        mine = self.pending.get(d.key)
        if mine is None or d.version > mine.version:
            if d.status == "pending":
                self.pending[d.key] = d
            else:
                self.pending.pop(d.key, None)
        self._wake.set()

    def enqueue(self, rows: list[list[Any]]) -> None:
        for row in rows:
            self.add(delivery_of(row))

    async def redeliver(self, d: Delivery) -> Delivery:
        """Send a delivery again (whatever its state): pending now, its 24 h start afresh."""
        now = self.clock()
        again = replace(
            d, status="pending", first_attempt_at=None, next_attempt_at=now, version=d.version + 1
        )
        await self.book.store.insert("webhook_deliveries", [again.row()], sql.DELIVERY_COLUMNS)
        self.pending.pop(d.key, None)
        self.add(again)
        return again

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)

    async def _round(self) -> None:
        now = self.clock()
        due = [
            d
            for d in self.pending.values()
            if d.key not in self._inflight
            and self.owns(d.org_id)
            and (d.next_attempt_at is None or d.next_attempt_at <= now)
            and self._endpoint(d) is not None
        ][: MAX_IN_FLIGHT - len(self._inflight)]
        for d in due:
            self._inflight.add(d.key)
            task = asyncio.create_task(self._attempt(d), name=f"tally-webhook-{d.msg_id}")
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)

    def _endpoint(self, d: Delivery) -> Endpoint | None:
        e = self.book.endpoints.get(d.endpoint_id)
        return e if e is not None and e.state == "enabled" else None

    async def _attempt(self, d: Delivery) -> None:
        try:
            e = self._endpoint(d)
            if e is not None:
                await self._send(d, e)
        except Exception:
            log.exception("webhook attempt %s failed to record", d.msg_id)
        finally:
            self._inflight.discard(d.key)

    async def _send(self, d: Delivery, e: Endpoint) -> None:
        assert self._http is not None
        started = self.clock()
        status, error = None, ""
        try:
            await check_target(e.url, self.policy.allow_private)
            body = d.payload.encode()
            headers = webhooks.headers(e.secret, d.msg_id, int(time.time()), body)
            response = await self._http.post(e.url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"the receiver answered {status}"
        except TargetRefused as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        await self._record(d, e, started, status, error, ok)

    async def _record(
        self, d: Delivery, e: Endpoint, at: datetime, status: int | None, error: str, ok: bool
    ) -> None:
        p, attempt = self.policy, d.attempts + 1
        first = d.first_attempt_at or at
        if ok:
            done = replace(d, status="succeeded", next_attempt_at=None)
        else:
            next_at = webhooks.next_attempt(first, attempt, self.clock(), p.backoff_s, p.retry_for)
            done = replace(d, status="pending" if next_at else "failed", next_attempt_at=next_at)
        done = replace(done, attempts=attempt, first_attempt_at=first, version=d.version + 1)
        row = [d.org_id, d.endpoint_id, d.msg_id, attempt, at, status, error]
        await self.book.store.insert("webhook_attempts", [row], sql.ATTEMPT_COLUMNS)
        await self.book.store.insert("webhook_deliveries", [done.row()], sql.DELIVERY_COLUMNS)
        self.pending.pop(d.key, None)
        self.add(done)
        metrics.webhook_attempts.labels("delivered" if ok else "failed").inc()
        log.info(
            "webhook %s to %s: attempt %d %s",
            d.msg_id,
            e.id,
            attempt,
            "delivered" if ok else f"failed ({error})",
            extra={"org": d.org_id},
        )
        await self._endpoint_health(e, at, ok)

    async def _endpoint_health(self, e: Endpoint, at: datetime, ok: bool) -> None:
        current = self.book.endpoints.get(e.id, e)
        now = self.clock()
        if ok:
            if current.failing_since is not None:
                await self.book.update_endpoint(current, now, failing_since=None)
            return
        if current.failing_since is None:
            await self.book.update_endpoint(current, now, failing_since=at)
        elif (
            current.state == "enabled" and now - current.failing_since >= self.policy.disable_after
        ):
            await self.book.update_endpoint(current, now, state="disabled")
            log.warning(
                "webhook endpoint %s disabled: failing since %s", e.id, current.failing_since
            )
            await self.fire(endpoint_disabled(e.org_id, e.id, current.failing_since, now))


def now_utc() -> datetime:
    return datetime.now(UTC)
