from datetime import UTC, datetime

from tally.domain.retention import cutoffs


def test_orgs_are_grouped_by_the_day_their_raw_events_expire():
    now = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
    got = cutoffs({"a": 7, "b": 30, "c": 7, "d": None}, now)
    assert got == {
        datetime(2026, 11, 16, tzinfo=UTC): ["a", "c"],
        datetime(2026, 10, 24, tzinfo=UTC): ["b"],
    }
