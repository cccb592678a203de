"""Window totals in the API's counter table stay equal to the sum of their days."""

import random
from datetime import UTC, datetime

import orjson

from api.counter_table import HANDED_OVER_FOR_MS, CounterTable
from tally.domain import counters
from tally.domain.counters import encode_key


def test_window_totals_follow_every_value_that_arrives():
    table = CounterTable("unused:9092")
    rng = random.Random(7)
    windows = [range(100, 131), range(120, 151), range(130, 131)]
    for _ in range(3000):
        org = rng.choice(["a", "b"])
        name = rng.choice([counters.TOKENS, counters.TOOL_CALLS])
        table.set((org, name, rng.randrange(90, 160)), rng.randrange(0, 1000))
        org, name, days = rng.choice(["a", "b"]), counters.TOKENS, rng.choice(windows)
        expected = sum(table.get((org, name, d)) for d in days)
        assert table.total(org, name, days) == expected
        assert table.total(org, name, list(days)) == expected  # not a range: summed each time


def test_expiring_old_days_drops_the_window_totals_with_them():
    table = CounterTable("unused:9092")
    now = datetime(2026, 11, 23, tzinfo=UTC)
    today = counters.epoch_day(now)
    old = range(today - 100, today - 80)
    table.set(("a", counters.TOKENS, today - 90), 5)
    assert table.total("a", counters.TOKENS, old) == 5
    assert table.expire(now) == 1
    assert table.total("a", counters.TOKENS, old) == 0


def _message(table: CounterTable, key, value: int, t: int) -> None:
    """A counters-topic message as the table's consumer applies it."""
    table._apply(encode_key(key), orjson.dumps({"v": value, "t": t}))


def test_a_value_handed_over_is_read_at_once_and_older_messages_do_not_undo_it():
    table = CounterTable("unused:9092")
    key, other = ("a", counters.TOKENS, 100), ("b", counters.TOKENS, 100)
    _message(table, key, 5, t=900)
    table.hand_over({key: 20}, at_ms=1_000)
    assert table.get(key) == 20
    assert table.total("a", counters.TOKENS, range(90, 101)) == 20
    _message(table, key, 10, t=990)  # published before: on its way when 20 was handed over
    _message(table, key, 20, t=1_000)  # the same publication coming back
    assert table.get(key) == 20
    assert table.total("a", counters.TOKENS, range(90, 101)) == 20
    _message(table, other, 7, t=990)  # keys not handed over take the topic's values
    assert table.get(other) == 7
    _message(table, key, 30, t=1_010)  # published later (another worker after a rebalance)
    assert table.get(key) == 30
    assert table.total("a", counters.TOKENS, range(90, 101)) == 30


def test_handed_over_keys_are_forgotten_after_a_while():
    table = CounterTable("unused:9092")
    key = ("a", counters.TOKENS, 100)
    table.hand_over({key: 20}, at_ms=1_000)
    table._forget_handed(1_000 + HANDED_OVER_FOR_MS + 1)
    _message(table, key, 25, t=1_000)  # the topic alone decides again
    assert table.get(key) == 25


def test_a_heartbeat_key_is_told_from_a_counter_key_by_its_prefix():
    from api.counter_table import _beat
    from tally.domain.counters import HEARTBEAT_KEY, encode_key

    assert _beat(encode_key((HEARTBEAT_KEY, "3", 0)))
    assert not _beat(encode_key(("acme", "tokens", 20_000)))
    assert not _beat(None)
