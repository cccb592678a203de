"""The report SQL builders: every caller value is a bound parameter, never SQL text."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest

from tally.domain.reports import METRICS, DayRange
from tally.store import queries as q
from tally.store import reports as sql

EVIL = "x' OR 1=1 --"
SPAN = DayRange(date(2026, 11, 1), date(2026, 12, 1))


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+):", text))


def test_breakdown_binds_every_value():
    text, params = sql.breakdown(
        EVIL, SPAN, ("day", "agent", "line_item"), ["live"], agent_id=EVIL, line_item="llm"
    )
    assert EVIL not in text and "OR 1=1" not in text
    assert params == {
        "org": EVIL,
        "start": date(2026, 11, 1),
        "end": date(2026, 12, 1),
        "modes": ["live"],
        "agent": EVIL,
        "line_item": "llm",
    }
    assert placeholders(text) == set(params)
    assert "FROM usage_daily" in text
    assert "GROUP BY g_day, g_agent_id, g_line_item ORDER BY g_day, g_agent_id, g_line_item" in text
    for metric in METRICS:
        assert f" AS {metric}" in text


def test_the_total_has_no_grouping_and_filters_are_optional():
    text, params = sql.breakdown("acme", SPAN, (), ["live", "test"], limit=10)
    assert "GROUP BY" not in text
    assert placeholders(text) == {"org", "start", "end", "modes", "limit"}
    assert text.endswith("LIMIT {limit:UInt32}") and params["limit"] == 10
    assert params["modes"] == ["live", "test"]


def test_only_known_groups_reach_the_sql():
    with pytest.raises(ValueError, match="unknown group"):
        sql.breakdown("acme", SPAN, ("day", EVIL), ["live"])


def test_run_and_agent_queries_bind_their_ids():
    text, params = sql.run_line_items(EVIL, EVIL)
    assert EVIL not in text and params == {"org": EVIL, "run": EVIL}
    assert "FROM usage_runs" in text and "GROUP BY" in text
    text, params = sql.agent_runs(EVIL, EVIL, SPAN, ["live"], 101)
    assert EVIL not in text
    assert placeholders(text) == set(params)
    assert params["limit"] == 101 and params["agent"] == EVIL


def test_credit_queries():
    text, params = sql.credit_topups(EVIL)
    assert EVIL not in text and params == {"org": EVIL}
    assert "GROUP BY idempotency_key" in text  # one top-up per key, whatever was stored
    text, params = sql.credit_topup(EVIL, EVIL)
    assert EVIL not in text and params == {"org": EVIL, "key": EVIL}


def test_live_cost_splits_the_opening_day_at_the_millisecond():
    opened = datetime(2026, 11, 3, 15, 4, 5, 678000, tzinfo=UTC)
    text, params = sql.live_cost_by_day_since("acme", opened, date(2026, 11, 4))
    assert params["since_ms"] == 1793718245678
    assert params["until_ms"] == 1793750400000
    assert params["first_full_day"] == date(2026, 11, 4)
    assert "FROM events" in text and "FROM usage_daily" in text
    assert placeholders(text) == set(params)
    assert sql.epoch_ms(datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)) == 1


def table_of(text: str) -> str:
    return re.findall(r" FROM (\w+) WHERE", text)[0]


@pytest.mark.parametrize(
    ("groups", "filters", "table"),
    [
        ((), {}, "usage_daily_items"),
        (("day",), {}, "usage_daily_items"),
        (("day", "line_item"), {"line_item": "llm"}, "usage_daily_items"),
        (("item", "key_mode", "mode"), {}, "usage_daily_items"),
        (("agent",), {}, "usage_daily_agents"),
        (("day",), {"agent_id": "bot"}, "usage_daily_agents"),
        (("day", "agent", "line_item", "key_mode"), {}, "usage_daily_agents"),
        (("agent", "item"), {}, "usage_daily"),
        (("mode",), {"agent_id": "bot"}, "usage_daily"),
        (("day", "agent", "line_item", "item", "key_mode", "mode"), {}, "usage_daily"),
    ],
)
def test_a_breakdown_reads_the_smallest_rollup_that_has_its_columns(groups, filters, table):
    text, _ = sql.breakdown("acme", SPAN, groups, ["live"], **filters)
    assert table_of(text) == table
    assert sql.rollup_for(()) == "usage_daily_items"


def test_derived_rollup_statements_bind_the_partition_and_days():
    days = [date(2026, 11, 2), date(2026, 11, 3)]
    text, params = q.derived_gaps(7)
    assert params == {"p": 7} and placeholders(text) == {"p"}
    assert all(f"FROM {t} WHERE partition" in text for t in q.DERIVED_KEYS)
    for table, key in q.DERIVED_KEYS.items():
        delete, insert = q.rebuild_derived(table, 7, days)
        assert delete[0].startswith(f"ALTER TABLE {table} DELETE WHERE")
        assert insert[0].startswith(f"INSERT INTO {table} SELECT {key},")
        assert "FROM usage_daily WHERE" in insert[0] and insert[0].count(f"GROUP BY {key}") == 1
        assert delete[1] == insert[1] == {"p": 7, "days": days}
        assert placeholders(delete[0]) == placeholders(insert[0]) == {"p", "days"}
    # A repair from the events empties the derived rollups for the same days first: the
    # re-insert into usage_daily reaches them through their views.
    org_days = [("acme", d) for d in days]
    statements = q.repair_rollups(7, org_days)
    deletes = [s for s, _ in statements if s.startswith("ALTER TABLE usage_daily")]
    assert [s.split()[2] for s in deletes] == ["usage_daily", *q.DERIVED_KEYS]
