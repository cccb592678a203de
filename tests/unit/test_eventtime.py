"""The event-time policy (tally.domain.eventtime): which `ts` are taken, and why the others
are not."""

from datetime import UTC, date, datetime, timedelta

import pytest

from tally.config import Settings
from tally.domain.eventtime import BACKFILL_HEADER, DEFAULT, Backfill, EventTime, refusal

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def test_the_limits_are_35_days_back_and_300_s_ahead_both_included():
    assert refusal(NOW, NOW) is None
    assert refusal(NOW - timedelta(days=35), NOW) is None
    assert refusal(NOW + timedelta(seconds=300), NOW) is None
    assert refusal(NOW - timedelta(days=35) - US, NOW) is not None
    assert refusal(NOW + timedelta(seconds=300) + US, NOW) is not None
    assert EventTime(35, 300) == DEFAULT
    assert DEFAULT.bounds(NOW) == (NOW - timedelta(days=35), NOW + timedelta(seconds=300))


def test_an_old_event_is_refused_with_the_setting_and_the_way_to_send_history():
    ts = datetime(2026, 10, 1, tzinfo=UTC)
    assert refusal(ts, NOW) == (
        "ts: 2026-10-01T00:00:00Z is more than 35 days in the past (TALLY_MAX_EVENT_AGE_DAYS);"
        " send history with `tally backfill FILE --from DAY --to DAY`"
    )
    assert refusal(ts + timedelta(milliseconds=123), NOW, max_age_days=7) == (
        "ts: 2026-10-01T00:00:00.123000Z is more than 7 days in the past"
        " (TALLY_MAX_EVENT_AGE_DAYS); send history with `tally backfill FILE --from DAY --to DAY`"
    )
    assert refusal(ts, NOW, max_age_days=60) is None


def test_an_event_from_the_future_is_refused_naming_the_clock():
    ts = NOW + timedelta(minutes=5, seconds=1)
    assert refusal(ts, NOW) == (
        "ts: 2026-11-23T12:05:01Z is more than 300 s in the future (TALLY_MAX_EVENT_SKEW_S);"
        " check the clock of the runtime that sent it"
    )
    assert refusal(ts, NOW, max_skew_s=3600) is None
    assert refusal(NOW + US, NOW, max_skew_s=0) is not None


def test_a_time_in_another_offset_is_judged_as_the_instant_it_names():
    from datetime import timezone

    plus_two = timezone(timedelta(hours=2))
    ts = (NOW - timedelta(days=35)).astimezone(plus_two)
    assert refusal(ts, NOW) is None
    assert refusal(ts - US, NOW).startswith("ts: 2026-10-19T11:59:59.999999Z is more than 35 days")


def test_history_is_taken_within_its_backfill_range_only():
    history = Backfill(date(2026, 9, 1), date(2026, 10, 1))
    assert refusal(datetime(2026, 9, 1, tzinfo=UTC), NOW, backfill=history) is None
    assert refusal(datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC), NOW, backfill=history) is None
    assert refusal(datetime(2026, 10, 1, tzinfo=UTC), NOW, backfill=history) == (
        "ts: 2026-10-01T00:00:00Z is more than 35 days in the past (TALLY_MAX_EVENT_AGE_DAYS)"
        " and outside the backfill range it was sent with (--from 2026-09-01 --to 2026-10-01)"
    )
    assert refusal(datetime(2026, 8, 31, 23, 59, tzinfo=UTC), NOW, backfill=history) is not None
    # A recent event is taken whatever its range says; the future stays refused.
    assert refusal(NOW, NOW, backfill=history) is None
    ahead = Backfill(date(2026, 11, 1), date(2026, 12, 1))
    assert "in the future" in refusal(NOW + timedelta(hours=1), NOW, backfill=ahead)


def test_a_backfill_range_travels_as_a_header():
    history = Backfill(date(2026, 9, 1), date(2026, 10, 1))
    assert history.header() == (BACKFILL_HEADER, b"2026-09-01/2026-10-01")
    assert Backfill.of([("other", b"x"), history.header()]) == history
    assert Backfill.of([("other", b"x")]) is None
    assert Backfill.of([]) is None
    for bad in (b"2026-09-01", b"2026-10-01/2026-09-01", b"x/y", b"\xff/\xfe", b"2026-09-01/"):
        assert Backfill.parse(bad) is None, bad
    with pytest.raises(ValueError, match="must be after --from"):
        Backfill(date(2026, 9, 1), date(2026, 9, 1))


def test_the_settings_make_the_policy(monkeypatch):
    assert Settings().event_time == DEFAULT
    monkeypatch.setenv("TALLY_MAX_EVENT_AGE_DAYS", "90")
    monkeypatch.setenv("TALLY_MAX_EVENT_SKEW_S", "60")
    assert Settings().event_time == EventTime(90, 60)
    monkeypatch.setenv("TALLY_MAX_EVENT_AGE_DAYS", "0")
    with pytest.raises(ValueError, match="max_event_age_days"):
        Settings()
