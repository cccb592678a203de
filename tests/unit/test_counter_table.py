"""Window totals in the API's counter table stay equal to the sum of their days."""

import random
from datetime import UTC, datetime

from api.counter_table import CounterTable
from tally.domain import counters


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
