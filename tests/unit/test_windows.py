from datetime import UTC, date, datetime, time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.domain.quota import billing_window, day_buckets, figures
from tally.domain.windows import day_window, minute_window, monthly_window


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "now", "start", "end"),
    [
        (1, at(2026, 6, 15), at(2026, 6, 1), at(2026, 7, 1)),
        (15, at(2026, 6, 15), at(2026, 6, 15), at(2026, 7, 15)),
        (15, at(2026, 6, 14, 23, 59), at(2026, 5, 15), at(2026, 6, 15)),
        (31, at(2026, 2, 10), at(2026, 1, 31), at(2026, 2, 28)),
        (31, at(2026, 2, 28), at(2026, 2, 28), at(2026, 3, 31)),
        (31, at(2026, 4, 30, 12), at(2026, 4, 30), at(2026, 5, 31)),
        (30, at(2028, 2, 29, 1), at(2028, 2, 29), at(2028, 3, 30)),
        (29, at(2027, 2, 28), at(2027, 2, 28), at(2027, 3, 29)),
        (29, at(2028, 2, 28), at(2028, 1, 29), at(2028, 2, 29)),
        (1, at(2026, 12, 31, 23, 59, 59), at(2026, 12, 1), at(2027, 1, 1)),
        (20, at(2027, 1, 5), at(2026, 12, 20), at(2027, 1, 20)),
    ],
)
def test_monthly_window(anchor, now, start, end):
    w = monthly_window(anchor, now)
    assert (w.start, w.end) == (start, end)
    assert w.contains(now)


def test_window_is_utc_whatever_the_input_offset():
    from datetime import timedelta, timezone

    now = datetime(2026, 7, 1, 1, 0, tzinfo=timezone(timedelta(hours=3)))  # June 30 22:00 UTC
    assert monthly_window(1, now).start == at(2026, 6, 1)


def test_bad_anchor_and_naive_time_are_refused():
    with pytest.raises(ValueError, match="anchor_day"):
        monthly_window(32, at(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        monthly_window(1, datetime(2026, 1, 1))


def test_billing_window_uses_the_anchor_day_and_covers_its_days():
    w = billing_window(date(2025, 1, 31), at(2026, 3, 5))
    assert (w.start, w.end) == (at(2026, 2, 28), at(2026, 3, 31))
    assert len(day_buckets(w)) == 31
    assert w.days()[0] == date(2026, 2, 28)


def test_day_and_minute_windows():
    assert day_window(at(2026, 3, 5, 13, 7)).start == at(2026, 3, 5)
    w = minute_window(at(2026, 3, 5, 13, 7, 59))
    assert (w.start, w.end) == (at(2026, 3, 5, 13, 7), at(2026, 3, 5, 13, 8))


def test_figures():
    assert figures(100, 30).remaining == 70
    assert figures(100, 130).remaining == 0
    assert figures(None, 30).remaining is None
    assert figures(100, None).remaining is None


@pytest.mark.parametrize("anchor", range(1, 32))
@pytest.mark.parametrize("year", [2026, 2027, 2028, 2100, 2000])
def test_every_anchor_day_tiles_the_year(anchor, year):
    """Windows for every anchor day chain without gaps, clamp to short months, and return."""
    import calendar

    t = at(year, 1, 1)
    w = monthly_window(anchor, t)
    for _ in range(14):
        assert w.contains(t)
        last = calendar.monthrange(w.start.year, w.start.month)[1]
        assert w.start.day == min(anchor, last)
        assert w.start.hour == 0 and w.start.tzinfo == UTC
        nxt = monthly_window(anchor, w.end)
        assert nxt.start == w.end  # no gap, no overlap
        assert 28 <= (w.end - w.start).days <= 31
        t, w = w.end, nxt


def test_leap_day_anchor():
    # Signed up on Feb 29: Feb 29 in leap years, Feb 28 otherwise, the 29th elsewhere.
    w = billing_window(date(2028, 2, 29), at(2029, 2, 28, 12))
    assert (w.start, w.end) == (at(2029, 2, 28), at(2029, 3, 29))
    w = billing_window(date(2028, 2, 29), at(2032, 2, 29))
    assert (w.start, w.end) == (at(2032, 2, 29), at(2032, 3, 29))


@given(
    anchor=st.integers(1, 31),
    times=st.lists(
        st.datetimes(
            min_value=datetime(2000, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=st.just(UTC),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_the_window_of_any_time_asked_in_any_order_is_the_one_containing_it(anchor, times):
    """Asked back and forth in time, each answer is the anchored period holding that time
    (the last window per anchor is reused only while it holds the time asked about)."""
    import calendar

    for t in times:
        w = monthly_window(anchor, t)
        assert w.contains(t)
        last = calendar.monthrange(w.start.year, w.start.month)[1]
        assert w.start.day == min(anchor, last) and w.start.time() == time(0)
        month_after = calendar.monthrange(w.end.year, w.end.month)[1]
        assert w.end.day == min(anchor, month_after) and w.end.time() == time(0)
        assert (w.end.year * 12 + w.end.month) - (w.start.year * 12 + w.start.month) == 1
