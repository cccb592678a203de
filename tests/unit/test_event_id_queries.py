"""The SQL that reads `event_ids`: every caller value bound, never SQL text.

`event_ids` keeps the id of every stored event when log retention deletes its row from
`events`; `events` holds the rows of an insert whose `event_ids` rows a crash lost. The
dedup rebuild and the stored-events look-up read both; the rollup repair compares them to
tell what retention deleted.
"""

from __future__ import annotations

import re
from datetime import date

from tally.store import migrations
from tally.store import ops as sql
from tally.store import queries as q

EVIL = "x' OR 1=1 --"


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+):", text))


def test_the_dedup_rebuild_reads_event_ids_and_events():
    text, params = q.recent_event_ids(3, 8, 1_700_000_000)
    assert params == {"p": 3, "n": 8, "since": 1_700_000_000}
    assert placeholders(text) == set(params)
    assert "FROM event_ids WHERE" in text and "FROM events WHERE" in text
    assert text.count("kafkaMurmurHash(org_id)") == 2  # the orgs of the partition, in both
    assert text.endswith("GROUP BY event_id ORDER BY last")  # each id once, oldest first


def test_the_stored_look_up_reads_event_ids_and_events_with_bound_ids():
    text, params = sql.stored_event_ids([EVIL, "e-2"], [EVIL])
    assert EVIL not in text and params == {"ids": [EVIL, "e-2"], "orgs": [EVIL]}
    assert placeholders(text) == {"ids", "orgs"}
    assert "FROM event_ids WHERE org_id IN {orgs:Array(String)} AND event_id IN" in text
    assert "FROM events WHERE org_id IN {orgs:Array(String)} AND event_id IN" in text
    text, params = sql.stored_event_ids(["e-1"])
    assert params == {"ids": ["e-1"]} and "orgs" not in text


def test_the_backfill_copies_what_the_materialized_view_writes():
    (statements,) = [s for name, s in migrations() if name == "008_event_ids.sql"]
    (view,) = [s for s in statements if s.startswith("CREATE MATERIALIZED VIEW")]
    assert " ".join(view.split()).split(" TO event_ids AS ", 1)[1] == q.EVENT_IDS_SELECT
    assert q.EVENT_IDS_BACKFILL.removeprefix("INSERT INTO event_ids ") == q.EVENT_IDS_SELECT


def test_the_rollup_repair_binds_its_org_days():
    days = [date(2026, 11, 2), date(2026, 11, 3)]
    text, params = q.rollup_gaps(7)
    assert params == {"p": 7} and placeholders(text) == {"p"}
    text, params = q.org_gaps(7, days)
    assert params == {"p": 7, "days": days} and placeholders(text) == {"p", "days"}
    assert text.count("GROUP BY org_id, d") == 3  # by org and day: each org's own

    text, params = q.deleted_days(7, [EVIL], days[0], days[1])
    assert EVIL not in text and placeholders(text) == set(params) == {"p", "orgs", "first", "last"}
    assert "FROM event_ids" in text and "FROM events" in text and "WHERE i.n > e.n" in text

    statements = q.repair_rollups(7, [(EVIL, days[0])])
    assert [s.split()[:3] for s, _ in statements] == [
        ["ALTER", "TABLE", "usage_daily"],
        *(["ALTER", "TABLE", t] for t in q.DERIVED_KEYS),
        ["ALTER", "TABLE", "usage_runs"],
        ["INSERT", "INTO", "usage_daily"],
        ["INSERT", "INTO", "usage_runs"],
    ]
    for text, params in statements:
        assert EVIL not in text
        assert placeholders(text) == set(params)
        assert params == {"p": 7, "orgs": [EVIL], "days": [days[0]]}
    # Nothing to rebuild: no statement.
    assert q.repair_rollups(7, []) == []
