"""Credit arithmetic: top-ups in, the cost of live usage out, in integer micro-units. No I/O.

An org's credit account opens with its first top-up. From that instant on, the cost of its
live usage (by event time) is debited: a day at a time, the first day from the opening
instant. The balance is the sum of the top-ups minus the sum of the debits, so it may go
below zero: credits report spend, they do not stop it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

MAX_TOPUP_MICROS = 10**13  # ten million in the currency's units, per top-up


@dataclass(frozen=True, slots=True)
class TopUp:
    idempotency_key: str
    amount_micros: int
    note: str
    at: datetime
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the history: a top-up (positive) or a day's usage (negative)."""

    at: datetime
    kind: Literal["topup", "usage"]
    amount_micros: int
    balance_micros: int
    idempotency_key: str | None = None
    note: str | None = None
    day: date | None = None


@dataclass(frozen=True, slots=True)
class Account:
    started_at: datetime | None
    topped_up_micros: int
    spent_micros: int
    balance_micros: int
    entries: tuple[Entry, ...]


Outcome = Literal["applied", "replayed", "conflict"]


def opened_at(topups: Sequence[TopUp]) -> datetime | None:
    """When the account opened: its first top-up, or None without one."""
    return min((t.at for t in topups), default=None)


def first_full_day(started_at: datetime) -> date:
    """The first UTC day the account is open from its midnight on."""
    return started_at.astimezone(UTC).date() + timedelta(days=1)


def account(topups: Sequence[TopUp], daily_cost: Mapping[date, int]) -> Account:
    """The balance and its history from the applied top-ups and the debited cost per day.

    `daily_cost` must hold only what falls after the opening instant (the store query
    reads it that way); days before the opening day are refused rather than guessed at.
    """
    started = opened_at(topups)
    if started is None:
        if any(daily_cost.values()):
            raise ValueError("usage cannot be debited from an account with no top-up")
        return Account(None, 0, 0, 0, ())
    if any(day < started.astimezone(UTC).date() for day in daily_cost):
        raise ValueError("usage before the account opened cannot be debited")
    lines: list[tuple[datetime, int, str, Entry]] = []
    for t in topups:
        entry = Entry(t.at, "topup", t.amount_micros, 0, t.idempotency_key, t.note)
        lines.append((t.at, 0, t.idempotency_key, entry))
    for day, cost in daily_cost.items():
        if cost:
            at = max(datetime.combine(day, time(), UTC), started)
            lines.append((at, 1, "", Entry(at, "usage", -cost, 0, day=day)))
    lines.sort(key=lambda line: line[:3])
    balance = 0
    entries = []
    for _, _, _, entry in lines:
        balance += entry.amount_micros
        entries.append(_with_balance(entry, balance))
    topped_up = sum(t.amount_micros for t in topups)
    spent = sum(daily_cost.values())
    assert balance == topped_up - spent
    return Account(started, topped_up, spent, balance, tuple(entries))


def _with_balance(entry: Entry, balance: int) -> Entry:
    return Entry(
        entry.at,
        entry.kind,
        entry.amount_micros,
        balance,
        entry.idempotency_key,
        entry.note,
        entry.day,
    )


def outcome(winner: TopUp, request_id: str, amount_micros: int, note: str) -> Outcome:
    """What a top-up request did, given the row that won its idempotency key.

    Our row won: applied. Another row won with the same amount and note: the request was a
    retry, and it changes nothing (replayed). Another won with different terms: conflict.
    """
    if winner.request_id == request_id:
        return "applied"
    if winner.amount_micros == amount_micros and winner.note == note:
        return "replayed"
    return "conflict"


def valid_amount(amount_micros: int) -> bool:
    return 0 < amount_micros <= MAX_TOPUP_MICROS


def to_millis(t: datetime) -> datetime:
    """`t` in UTC, truncated to the millisecond the store keeps."""
    t = t.astimezone(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
