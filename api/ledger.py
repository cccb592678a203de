"""The credit ledger: top-ups stored once per idempotency key, the balance read from usage.

Top-ups are rows of `credit_topups`; debits are never stored, they are the cost of live
usage read from the rollups, which the worker writes exactly once. So a balance is exact
whatever was retried, replayed or raced: a replayed top-up finds its key taken, and a
replayed event is not stored twice.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from tally.domain import credits
from tally.domain.credits import Account, Outcome, TopUp
from tally.store import Store
from tally.store import reports as sql

TOPUP_COLUMNS = ("org_id", "idempotency_key", "request_id", "amount_micros", "note", "created_at")


class CreditLedger:
    def __init__(self, store: Store, lock: asyncio.Lock) -> None:
        self.store = store
        # Serialises top-ups in this process, so that the first request for a key is the
        # first row stored under it. Across API replicas the stored order still picks one
        # winner per key for every reader: the balance stays exact either way.
        self.lock = lock

    async def topups(self, org_id: str) -> list[TopUp]:
        return [_topup(row) for row in await self.store.query(*sql.credit_topups(org_id))]

    async def account(self, org_id: str) -> Account:
        topups = await self.topups(org_id)
        started = credits.opened_at(topups)
        daily: dict[Any, int] = {}
        if started is not None:
            rows = await self.store.query(
                *sql.live_cost_by_day_since(org_id, started, credits.first_full_day(started))
            )
            daily = {day: int(cost) for day, cost in rows}
        return credits.account(topups, daily)

    async def top_up(
        self, org_id: str, idempotency_key: str, amount_micros: int, note: str
    ) -> tuple[TopUp, Outcome]:
        """Apply a top-up once per key; returns the top-up that holds the key and what this
        request did: applied, replayed (same terms, nothing changed) or conflict."""
        request_id = uuid.uuid4().hex
        async with self.lock:
            winner = await self._winner(org_id, idempotency_key)
            if winner is None:
                now = credits.to_millis(datetime.now(UTC))
                row = [org_id, idempotency_key, request_id, amount_micros, note, now]
                await self.store.insert("credit_topups", [row], TOPUP_COLUMNS)
                winner = await self._winner(org_id, idempotency_key)
        if winner is None:
            raise RuntimeError("a stored top-up could not be read back")
        return winner, credits.outcome(winner, request_id, amount_micros, note)

    async def _winner(self, org_id: str, idempotency_key: str) -> TopUp | None:
        rows = await self.store.query(*sql.credit_topup(org_id, idempotency_key))
        return _topup(rows[0]) if rows else None


def _topup(row: tuple[Any, ...]) -> TopUp:
    key, amount, note, created_at, request_id = row
    at = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at
    return TopUp(str(key), int(amount), str(note), at.astimezone(UTC), str(request_id))
