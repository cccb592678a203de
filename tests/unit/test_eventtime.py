"""The event-time policy (tally.domain.eventtime): which `ts` are taken, and why the others
are not."""

from datetime import UTC, date, datetime, timedelta, timezone

import orjson
import pytest

from commands.ops.backfill import too_old
from commands.ops.submit import Submitter
from tally.config import Settings
from tally.domain.eventtime import (
    BACKFILL_HEADER,
    DEFAULT,
    Backfill,
    EventTime,
    iso,
    refusal,
)
from tests.factories import make_event

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        "ts: 2026-10-01T00:00:00.123Z is more than 7 days in the past"
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


def test_times_are_written_in_utc_to_their_precision():
    assert iso(datetime(2026, 10, 1, 2, tzinfo=UTC)) == "2026-10-01T02:00:00Z"
    assert iso(datetime(2026, 10, 1, 2, 0, 0, 120_000, tzinfo=UTC)) == "2026-10-01T02:00:00.120Z"
    assert iso(datetime(2026, 10, 1, 2, 0, 0, 5, tzinfo=UTC)) == "2026-10-01T02:00:00.000005Z"
    plus_two = datetime(2026, 10, 1, 2, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert iso(plus_two) == "2026-10-01T02:00:00Z"


def test_a_time_in_another_offset_is_judged_as_the_instant_it_names():
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


def _file(tmp_path, *events) -> object:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join([b"{not json", *(orjson.dumps(e) for e in events)]) + b"\n")
    return path


def _at(now: datetime, **delta: float) -> tuple[dict, datetime]:
    """An event of time `now - delta` (to the millisecond, as written), and that time."""
    text = _iso(now - timedelta(**delta))
    return make_event(ts=text), datetime.fromisoformat(text)


def test_backfill_finds_history_before_sending_and_names_the_range_it_needs(tmp_path):
    now = datetime.now(UTC)
    recent, _ = _at(now, days=2)
    assert too_old(_file(tmp_path, recent), DEFAULT, now) is None
    (first, first_ts), *others = [_at(now, days=d) for d in (36, 50, 40)]
    found = too_old(_file(tmp_path, recent, first, *(e for e, _ in others)), DEFAULT, now)
    assert found is not None
    assert (found.count, found.first, found.first_ts) == (3, "line 3", first_ts)
    today = now.date()
    assert found.suggested == Backfill(
        (now - timedelta(days=50)).date(), (now - timedelta(days=2)).date() + timedelta(days=1)
    )
    assert found.suggested.end <= today
    assert too_old(_file(tmp_path, first), EventTime(max_age_days=60), now) is None


async def test_backfill_sends_only_what_the_worker_takes():
    now = datetime.now(UTC)
    history = Backfill((now - timedelta(days=60)).date(), (now - timedelta(days=30)).date())
    (inside, inside_ts), (outside, outside_ts), (recent, recent_ts), (ahead, ahead_ts) = (
        _at(now, days=45),
        _at(now, days=70),
        _at(now, days=1),
        _at(now, hours=-1),
    )
    events = [inside, outside, recent, ahead]
    lines = [(f"line {i}", orjson.dumps(e)) for i, e in enumerate(events)]

    as_history = Submitter(None, None, backfill=history)  # a dry run: nothing is sent
    await as_history.submit(lines)
    assert as_history.report.sent == 1
    reasons = [(where, why.split(" (")[0]) for where, why in as_history.report.invalid]
    assert reasons == [
        ("line 1", f"ts: {iso(outside_ts)} is outside the backfill range"),
        ("line 2", f"ts: {iso(recent_ts)} is outside the backfill range"),
        ("line 3", f"ts: {iso(ahead_ts)} is outside the backfill range"),
    ]
    assert as_history.report.invalid[0][1].endswith(f"({history})")

    live = Submitter(None, None)
    await live.submit(lines)
    assert live.report.sent == 1  # the recent one
    assert live.report.invalid == [
        ("line 0", refusal(inside_ts, now)),
        ("line 1", refusal(outside_ts, now)),
        ("line 3", refusal(ahead_ts, now)),
    ]
