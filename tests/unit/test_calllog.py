"""The call log's rules: cursors, billing marks, the range within the retention."""

from datetime import UTC, datetime

import pytest

from tally.domain import calllog
from tally.domain.calllog import Cursor, OutsideRetention
from tally.domain.reports import InvalidParameter

NOW = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)


def test_a_cursor_round_trips_any_event_id():
    for event_id in ("0193a-uuid", "", "ünïcode/+=", "a" * 128):
        c = Cursor(1_765_000_000_000, 1_764_999_999_123, event_id)
        assert calllog.decode_cursor(c.encode()) == c


@pytest.mark.parametrize(
    "raw", ["", "x", "1.2", "1.2.***", "-1.2.61", "1.2.61.3", "1.2.abc", "1.2.6G"]
)
def test_anything_else_is_refused_as_a_cursor(raw):
    with pytest.raises(InvalidParameter, match="cursor"):
        calllog.decode_cursor(raw)


def test_any_cursor_of_the_right_shape_is_a_position():
    c = calllog.decode_cursor("999999999999999.999999999999999.ff")
    assert c.ts_ms == c.as_of_ms == calllog.first_page(NOW).ts_ms  # clamped to the store's range
    assert c.event_id == "\ufffd"


def test_the_first_page_starts_above_every_event_stored_by_now():
    first = calllog.first_page(NOW)
    assert first.as_of_ms == calllog.epoch_ms(NOW)
    assert first.ts_ms > calllog.epoch_ms(datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC))


def test_billed_or_why_not():
    assert calllog.not_billed("llm.usage", "live", 1) is None
    assert calllog.not_billed("tool.call", "live", 0) == "failed"
    assert calllog.not_billed("tool.call", "test", 0) == "test_key"
    assert calllog.not_billed("tool.call", "test", 1) == "test_key"
    assert not calllog.failed("llm.usage", 0)


def test_the_range_stays_within_the_retention_and_says_which():
    assert calllog.span(None, None, 7, NOW).start == datetime(2026, 11, 30, tzinfo=UTC)
    assert calllog.span(None, None, None, NOW) == calllog.Span(None, None)
    one_day = calllog.span("2026-12-01", "2026-12-02", 7, NOW)
    assert (one_day.start, one_day.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2026, 12, 2, tzinfo=UTC),
    )
    with pytest.raises(OutsideRetention, match="7 days: from must be 2026-11-30 or later"):
        calllog.span("2026-11-29", None, 7, NOW)
    with pytest.raises(InvalidParameter, match="to"):
        calllog.span("2026-12-02", "2026-12-01", 7, NOW)
    with pytest.raises(InvalidParameter, match="limit"):
        calllog.limit(1001)
