"""Sessions are leases: renewal, lapse and the verdict of the log (pure logic)."""

from datetime import UTC, datetime, timedelta

import orjson

from schemas.events import parse_event
from streams.batch import PartitionState, Record, apply, process
from streams.sessions import LeaseKeeper
from tally.catalogue import load_prices
from tally.domain import counters
from tally.domain.eventtime import EventTime
from tally.domain.leases import Lease, expiry_event, lapsed, to_ms
from tally.domain.pricing import Pricer
from tests.factories import make_event

PRICER = Pricer(load_prices())
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SESSIONS = ("o", counters.SESSIONS, 0)
_offset = iter(range(10**6))


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ev(type="llm.usage", minutes=0.0, **kw):
    return make_event(type, org_id="o", agent_id="a", run_id="r", ts=at(minutes), **kw)


def run(state, *events):
    recs = [Record(next(_offset), orjson.dumps(e)) for e in events]
    result = process(state, recs, PRICER, NOW + timedelta(hours=1), "e")
    return result, apply(state, result)


def test_any_event_of_an_open_session_renews_its_lease_to_its_event_time():
    state = PartitionState(0)
    run(state, ev("session.started", session_id="s"))
    assert state.leases[("o", "s")] == Lease(NOW, "a", "r")
    run(state, ev(minutes=5, session_id="s"), ev(minutes=3, session_id="s"))
    assert state.leases[("o", "s")].last_seen == NOW + timedelta(minutes=5)
    run(state, ev("session.heartbeat", minutes=9, session_id="s"))
    assert state.leases[("o", "s")].last_seen == NOW + timedelta(minutes=9)
    run(state, ev(minutes=20, session_id="other"))  # not open: no lease
    assert ("o", "other") not in state.leases


def test_a_lapse_ends_the_session_once_and_is_stored_as_expired():
    state = PartitionState(0)
    run(state, ev("session.started", session_id="s"))
    assert state.counters[SESSIONS] == 1
    lease = state.leases[("o", "s")]
    end = expiry_event(("o", "s"), lease, 900, NOW - timedelta(days=30))
    assert end["ts"] == at(15).replace("Z", ".000Z")
    assert end["last_seen_at"] == at(0).replace("Z", ".000Z")
    parse_event(orjson.dumps(end))  # a valid event of the contract
    result, changed = run(state, end, end)
    assert changed[SESSIONS] == 0 and result.ends == {"expired": 1} and result.duplicates == 1
    assert [row[9] for row in result.rows] == ["expired"]  # item of the sessions line
    assert ("o", "s") not in state.sessions and ("o", "s") not in state.leases


def test_an_expiry_read_after_a_renewal_is_void_and_not_stored():
    state = PartitionState(0)
    run(state, ev("session.started", session_id="s"))
    end = expiry_event(("o", "s"), state.leases[("o", "s")], 900, NOW - timedelta(days=30))
    # The runtime renewed the lease before the worker's end reached the log.
    result, changed = run(state, ev("session.heartbeat", minutes=14, session_id="s"), end)
    assert len(result.voided) == 1 and len(result.rows) == 1 and not result.ends
    assert state.counters[SESSIONS] == 1 and state.sessions[("o", "s")] == 1
    # An end of a session that already ended is void too.
    late = expiry_event(("o", "s"), state.leases[("o", "s")], 900, NOW - timedelta(days=30))
    run(state, ev("session.ended", minutes=20, session_id="s"))
    result, _ = run(state, late)
    assert len(result.voided) == 1 and state.counters[SESSIONS] == 0


def test_lapsed_leases_are_found_by_the_wall_clock_and_their_ends_written_once():
    leases = {
        ("o", "s1"): Lease(NOW, "a", ""),
        ("o", "s2"): Lease(NOW + timedelta(minutes=5), "a", ""),
    }
    assert lapsed(leases.items(), NOW + timedelta(minutes=15), 900) == [
        (("o", "s1"), leases[("o", "s1")])
    ]
    state = PartitionState(0, sessions={k: 1 for k in leases}, leases=leases)
    keeper = LeaseKeeper(900, EventTime())
    due = keeper.due({0: state}, NOW + timedelta(minutes=21), clock=100.0)
    assert [sk for _, sk, _ in due] == [("o", "s1"), ("o", "s2")]
    assert keeper.due({0: state}, NOW + timedelta(minutes=21), clock=101.0) == []
    again = keeper.due({0: state}, NOW + timedelta(minutes=21), clock=106.0)  # not read back
    assert [e["event_id"] for *_, e in again] == [e["event_id"] for *_, e in due]


def test_lease_times_are_kept_to_the_millisecond_as_the_store_keeps_them():
    assert to_ms(datetime(2026, 1, 1, 0, 0, 0, 123_456, tzinfo=UTC)).microsecond == 123_000
