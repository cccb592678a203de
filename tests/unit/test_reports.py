"""Report parameters and the shaping of report rows: pure, no store."""

from __future__ import annotations

from datetime import date

import pytest

from tally.domain import reports
from tally.domain.reports import METRICS, DayRange, InvalidParameter

PERIOD = DayRange(date(2026, 11, 18), date(2026, 12, 18))


def test_no_range_means_the_current_period():
    assert reports.day_range(None, None, PERIOD) == PERIOD


def test_a_range_is_half_open_and_bounded():
    one = reports.day_range("2026-02-28", "2026-03-01", PERIOD)
    assert one.days == 1 and one.each_day() == [date(2026, 2, 28)]
    leap = reports.day_range("2024-01-01", "2025-01-01", PERIOD)
    assert leap.days == 366
    with pytest.raises(InvalidParameter, match="^to: the range spans 367 days"):
        reports.day_range("2024-01-01", "2025-01-02", PERIOD)


@pytest.mark.parametrize(
    ("raw_from", "raw_to", "parameter"),
    [
        ("2026-03-02", "2026-03-01", "to"),
        ("2026-03-01", "2026-03-01", "to"),
        ("2026-02-30", "2026-03-01", "from"),
        ("2026-3-1", "2026-03-02", "from"),
        ("20260301", "2026-03-02", "from"),
        ("2026-03-01", "2026-03-02T00:00:00Z", "to"),
        ("2026-03-01", None, "to"),
        (None, "2026-03-01", "from"),
        ("", "2026-03-01", "from"),
    ],
)
def test_bad_ranges_name_the_parameter(raw_from, raw_to, parameter):
    with pytest.raises(InvalidParameter) as info:
        reports.day_range(raw_from, raw_to, PERIOD)
    assert info.value.parameter == parameter
    assert str(info.value).startswith(f"{parameter}: ")


def test_group_by():
    assert reports.group_by(None) == ()
    assert reports.group_by("") == ()
    assert reports.group_by("day, agent,line_item") == ("day", "agent", "line_item")
    with pytest.raises(InvalidParameter, match="'org' is not a dimension"):
        reports.group_by("day,org")
    with pytest.raises(InvalidParameter, match="named twice"):
        reports.group_by("agent,agent")
    with pytest.raises(InvalidParameter):
        reports.group_by("day,")


def test_key_modes_line_items_and_identifiers():
    assert reports.key_modes(None) == ("live",)
    assert reports.key_modes("all") == ("live", "test")
    assert reports.key_modes("test") == ("test",)
    with pytest.raises(InvalidParameter, match="^key_mode:"):
        reports.key_modes("LIVE")
    assert reports.line_item("storage") == "storage"
    with pytest.raises(InvalidParameter, match="^line_item:"):
        reports.line_item("gpu")
    assert reports.identifier("agent_id", "a" * 128) == "a" * 128
    with pytest.raises(InvalidParameter, match="^agent_id:"):
        reports.identifier("agent_id", "")


def test_days_without_usage_are_zeros():
    span = DayRange(date(2026, 2, 27), date(2026, 3, 2))
    filled = reports.fill_days(span, {date(2026, 2, 28): {"events": 3, "cost_micros": 7}})
    assert [d for d, _ in filled] == [date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1)]
    assert filled[0][1] == dict.fromkeys(METRICS, 0)
    assert filled[1][1]["events"] == 3 and filled[1][1]["cost_micros"] == 7
    assert reports.total_of(f for _, f in filled)["cost_micros"] == 7


def test_split_row():
    row = (date(2026, 1, 2), "bot", *range(len(METRICS)))
    keys, figures = reports.split_row(("day", "agent"), row)
    assert keys == {"day": date(2026, 1, 2), "agent": "bot"}
    assert figures == {m: i for i, m in enumerate(METRICS)}
    with pytest.raises(ValueError):
        reports.split_row(("day",), row)
    with pytest.raises(TypeError):
        reports.split_row((), (*range(len(METRICS) - 1), 1.5))


def test_split_rows_splits_each_row_and_adds_them_up():
    rows = [
        (date(2026, 1, 2), "bot", *range(len(METRICS))),
        (date(2026, 1, 3), "bot", *(10 * i for i in range(len(METRICS)))),
    ]
    split, total = reports.split_rows(("day", "agent"), rows)
    assert split == [(tuple(row[:2]), reports.split_row(("day", "agent"), row)[1]) for row in rows]
    assert total == {m: 11 * i for i, m in enumerate(METRICS)}
    assert total == reports.total_of(figures for _, figures in split)
    assert reports.split_rows(("day",), []) == ([], reports.zero())
    ungrouped = (tuple(range(len(METRICS))),)
    assert reports.split_rows((), ungrouped)[1] == dict(zip(METRICS, ungrouped[0], strict=True))
    with pytest.raises(ValueError):
        reports.split_rows(("day",), rows)
    for bad in (1.5, True):
        with pytest.raises(TypeError):
            reports.split_rows((), [(*range(len(METRICS) - 1), bad)])
