"""Credit arithmetic: the balance, its history and the outcome of a top-up request."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tally.domain import credits
from tally.domain.credits import TopUp

OPENED = datetime(2026, 11, 3, 15, 0, 0, 250000, tzinfo=UTC)


def topup(key: str, amount: int, at: datetime, request_id: str = "r") -> TopUp:
    return TopUp(key, amount, "", at, request_id)


def test_no_top_up_no_account():
    account = credits.account([], {})
    assert account.started_at is None
    assert (account.balance_micros, account.topped_up_micros, account.spent_micros) == (0, 0, 0)
    assert account.entries == ()
    with pytest.raises(ValueError):
        credits.account([], {date(2026, 11, 3): 5})


def test_balance_is_top_ups_minus_daily_cost_with_a_running_history():
    topups = [
        topup("a", 10_000_000, OPENED),
        topup("b", 2_000_000, datetime(2026, 11, 4, 9, tzinfo=UTC)),
    ]
    daily = {date(2026, 11, 3): 1_500_001, date(2026, 11, 4): 3_000_000, date(2026, 11, 5): 0}
    account = credits.account(topups, daily)
    assert account.started_at == OPENED
    assert account.topped_up_micros == 12_000_000
    assert account.spent_micros == 4_500_001
    assert account.balance_micros == 7_499_999
    lines = [(e.kind, e.amount_micros, e.balance_micros, e.at) for e in account.entries]
    assert lines == [
        ("topup", 10_000_000, 10_000_000, OPENED),
        ("usage", -1_500_001, 8_499_999, OPENED),  # the opening day counts from the opening
        ("usage", -3_000_000, 5_499_999, datetime(2026, 11, 4, tzinfo=UTC)),
        ("topup", 2_000_000, 7_499_999, datetime(2026, 11, 4, 9, tzinfo=UTC)),
    ]
    assert account.entries[1].day == date(2026, 11, 3)
    assert account.entries[0].idempotency_key == "a"


def test_spending_past_the_top_ups_goes_negative():
    account = credits.account([topup("a", 100, OPENED)], {date(2026, 11, 3): 250})
    assert account.balance_micros == -150


def test_usage_before_the_account_opened_is_refused():
    with pytest.raises(ValueError, match="before the account opened"):
        credits.account([topup("a", 100, OPENED)], {date(2026, 11, 2): 1})


def test_the_account_opens_with_the_first_top_up():
    later = datetime(2026, 12, 1, tzinfo=UTC)
    assert credits.opened_at([topup("b", 1, later), topup("a", 1, OPENED)]) == OPENED
    assert credits.opened_at([]) is None
    assert credits.first_full_day(OPENED) == date(2026, 11, 4)
    assert credits.first_full_day(datetime(2026, 11, 3, tzinfo=UTC)) == date(2026, 11, 4)


def test_outcome_of_a_top_up_request():
    winner = TopUp("k", 500, "note", OPENED, "req-1")
    assert credits.outcome(winner, "req-1", 500, "note") == "applied"
    assert credits.outcome(winner, "req-2", 500, "note") == "replayed"
    assert credits.outcome(winner, "req-2", 501, "note") == "conflict"
    assert credits.outcome(winner, "req-2", 500, "other") == "conflict"


def test_amounts_and_millisecond_times():
    assert credits.valid_amount(1) and credits.valid_amount(credits.MAX_TOPUP_MICROS)
    assert not credits.valid_amount(0) and not credits.valid_amount(-5)
    assert not credits.valid_amount(credits.MAX_TOPUP_MICROS + 1)
    t = datetime(2026, 11, 3, 15, 0, 0, 123987, tzinfo=UTC)
    assert credits.to_millis(t) == datetime(2026, 11, 3, 15, 0, 0, 123000, tzinfo=UTC)
