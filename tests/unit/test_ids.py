"""UUIDv7 event ids: valid, unique, ordered by creation time."""

from __future__ import annotations

import time
import uuid

from producers.ids import stamp, uuid7, uuid7_time_ms


def test_uuid7_is_a_valid_version_7_uuid():
    value = uuid.UUID(uuid7())
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_ids_are_unique_and_sort_by_creation_time():
    ids = []
    for _ in range(20_000):
        ids.append(uuid7())
    assert len(set(ids)) == len(ids)
    ms = [uuid7_time_ms(i) for i in ids]
    assert ms == sorted(ms)
    # Across milliseconds the text order is the time order.
    spaced = []
    for _ in range(5):
        spaced.append(uuid7())
        time.sleep(0.002)
    assert spaced == sorted(spaced)


def test_stamp_gives_the_time_and_an_id_from_one_clock_reading():
    now_ns = 1_795_430_100_123_456_789
    ts, event_id = stamp(now_ns)
    assert ts == "2026-11-23T10:35:00.123Z"
    assert uuid7_time_ms(event_id) == now_ns // 1_000_000
