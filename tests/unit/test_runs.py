"""The runs meter's arithmetic: a run counts once in every window it has a live event in."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.domain import runs
from tally.domain.counters import day_bucket
from tally.domain.quota import day_buckets
from tally.domain.windows import monthly_window

# Each run: its events' days, in the order they arrive (late ones included).
arrivals = st.lists(st.lists(st.integers(0, 120), min_size=1, max_size=8), max_size=12)


def count(runs_days: list[list[int]]) -> Counter[tuple[str, int]]:
    """Counters after every arrival, applied as the worker applies them."""
    totals: Counter[tuple[str, int]] = Counter()
    for arrived in runs_days:
        days: runs.Days = ()
        for day in arrived:
            days, changes = runs.arrive(days, day)
            for name, bucket, change in changes:
                totals[name, bucket] += change
    return totals


def used(totals: Counter[tuple[str, int]], first: int, length: int) -> int:
    return runs.used(lambda name, days: sum(totals[name, d] for d in days), first, length)


@settings(max_examples=300, deadline=None)
@given(arrivals, st.integers(0, 100), st.sampled_from([28, 29, 30, 31]))
def test_a_window_counts_each_run_with_an_event_in_it_once(runs_days, first, length):
    totals = count(runs_days)
    expected = sum(any(first <= d < first + length for d in days) for days in runs_days)
    assert used(totals, first, length) == expected


@settings(max_examples=200, deadline=None)
@given(arrivals)
def test_the_counters_are_those_of_the_days_whatever_the_order(runs_days):
    rebuilt: Counter[tuple[str, int]] = Counter()
    for arrived in runs_days:
        for name, day in runs.counted(sorted(set(arrived))):
            rebuilt[name, day] += 1
    assert +count(runs_days) == rebuilt  # what a worker rebuilt from the store publishes


def test_a_run_over_a_period_end_counts_in_both_windows():
    # Anchor 15: Nov 15 - Dec 15 and Dec 15 - Jan 15; a run on Dec 14 and Dec 15.
    nov = day_buckets(monthly_window(15, datetime(2026, 12, 1, tzinfo=UTC)))
    dec = day_buckets(monthly_window(15, datetime(2026, 12, 20, tzinfo=UTC)))
    totals = count([[dec.start - 1, dec.start], [dec.start - 1]])
    assert used(totals, nov.start, len(nov)) == 2
    assert used(totals, dec.start, len(dec)) == 1


def test_a_late_event_between_two_days_moves_a_gap_and_no_window_goes_down():
    d = day_bucket(datetime(2026, 11, 20, tzinfo=UTC).date())
    days, changes = runs.arrive((d - 20, d), d - 5)
    assert days == (d - 20, d - 5, d)
    assert sorted(changes) == [("runs.15", d - 5, 1), ("runs.20", d, -1), ("runs.5", d, 1)]
    assert runs.arrive(days, d - 5) == (days, [])  # a day already active changes nothing


def test_trim_keeps_the_day_the_next_gap_is_measured_from():
    assert runs.trim((10, 40, 50), 45) == (40, 50)
    assert runs.trim((10, 20), 45) is None
    assert runs.trim((50,), 45) == (50,)
