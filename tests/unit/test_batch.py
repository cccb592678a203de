"""The pure batch path: decode, dedup, price, aggregate, apply."""

from datetime import UTC, date, datetime

import orjson

from streams.batch import (
    FORWARDED_FROM,
    HOPS,
    MAX_HOPS,
    PartitionState,
    Record,
    apply,
    process,
    projected,
)
from tally.catalogue import load_prices
from tally.domain import counters
from tally.domain.eventtime import BACKFILL_HEADER, Backfill, EventTime
from tally.domain.partitioning import partition_of
from tally.domain.pricing import Pricer
from tally.metrics import reason_class
from tests.factories import make_event

PRICER = Pricer(load_prices())
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
DAY = counters.epoch_day(NOW)


def records(*events, start=0):
    return [
        Record(start + i, e if isinstance(e, bytes) else orjson.dumps(e))
        for i, e in enumerate(events)
    ]


def run(state, *events, start=0):
    result = process(state, records(*events, start=start), PRICER, NOW, "e")
    return result, apply(state, result)


def ev(type="llm.usage", **kw):
    kw.setdefault("ts", "2026-11-23T11:00:00Z")
    kw.setdefault("org_id", "o")
    return make_event(type, **kw)


def test_tokens_and_cost_are_counted_per_day():
    state = PartitionState(0)
    result, changed = run(state, ev(input_tokens=1_000_000, output_tokens=1_000_000))
    assert changed[("o", counters.TOKENS, DAY)] == 2_000_000
    assert changed[("o", "cost.llm", DAY)] == 2_500_000 + 10_000_000
    assert len(result.rows) == 1 and not result.dead
    assert state.next_offset == 1


def test_duplicates_are_dropped_within_a_batch_and_across_batches():
    state = PartitionState(0)
    e = ev(event_id="same")
    result, _ = run(state, e, e)
    assert (len(result.rows), result.duplicates) == (1, 1)
    result, changed = run(state, e, start=2)
    assert (len(result.rows), result.duplicates, changed) == (0, 1, {})
    assert state.next_offset == 3


def test_test_keys_and_failed_calls_are_stored_but_free():
    state = PartitionState(0)
    result, changed = run(
        state,
        ev(key_mode="test"),
        ev("tool.call", success=False),
        ev("tool.call", key_mode="test"),
        ev("tool.call", connector="github"),
    )
    assert len(result.rows) == 4
    # The two live events start a run each (a run counts at any live event of it, a failed
    # call included); the test-key events count nothing.
    assert changed == {
        ("o", counters.TOOL_CALLS, DAY): 1,
        ("o", "cost.tool_calls", DAY): 2000,
        ("o", counters.RUNS, DAY): 2,
    }


def test_invalid_messages_become_dead_letters_with_their_position():
    state = PartitionState(3, next_offset=10)
    result, _ = run(state, b"{oops", ev(input_tokens=-1), ev(), start=10)
    assert [(d.offset, d.partition) for d in result.dead] == [(10, 3), (11, 3)]
    assert "input_tokens" in result.dead[1].error
    assert len(result.rows) == 1 and state.next_offset == 13


def test_late_events_count_in_their_own_day():
    state = PartitionState(0)
    # 33 days late: within TALLY_MAX_EVENT_AGE_DAYS (35)
    _, changed = run(state, ev(ts="2026-10-20T23:59:59Z", input_tokens=5, output_tokens=0))
    day = counters.epoch_day(datetime(2026, 10, 20, tzinfo=UTC))
    # 5 gpt-4o input tokens at 2.5 micro-units each: 12.5, rounded half up once per event
    assert changed == {
        ("o", counters.TOKENS, day): 5,
        ("o", "cost.llm", day): 13,
        ("o", counters.UPSTREAM_COST, day): 13,  # managed mode: the platform pays upstream
        ("o", counters.RUNS, day): 1,  # its run, on the day of the event too
    }


def test_events_too_old_or_from_the_future_are_dead_letters_with_the_reason():
    state = PartitionState(0)
    old, ahead = ev(ts="2026-10-01T00:00:00Z"), ev(ts="2026-11-23T12:05:01Z")
    edges = [ev(ts="2026-10-19T12:00:00Z"), ev(ts="2026-11-23T12:05:00Z")]  # taken
    result, changed = run(state, old, ahead, *edges, ev("session.started", ts=old["ts"]))
    assert [(d.offset, d.error) for d in result.dead] == [
        (
            0,
            "ts: 2026-10-01T00:00:00Z is more than 35 days in the past"
            " (TALLY_MAX_EVENT_AGE_DAYS); send history with"
            " `tally backfill FILE --from DAY --to DAY`",
        ),
        (
            1,
            "ts: 2026-11-23T12:05:01Z is more than 300 s in the future"
            " (TALLY_MAX_EVENT_SKEW_S); check the clock of the runtime that sent it",
        ),
        (4, result.dead[0].error),
    ]
    assert result.dead[0].value == orjson.dumps(old)
    assert [r[1] for r in result.rows] == [e["event_id"] for e in edges]
    assert result.event_ids == {e["event_id"] for e in edges}  # a refused id is not kept
    assert {k[2] for k in changed} == {counters.epoch_day(datetime(2026, 10, 19, tzinfo=UTC)), DAY}
    assert reason_class(result.dead[0].error) == "too_old"
    assert reason_class(result.dead[1].error) == "in_future"
    # The same event sent again once fixed (or as history) is not a duplicate.
    again = records(old, start=5)
    fixed = [Record(5, again[0].value, [Backfill(date(2026, 10, 1), date(2026, 10, 2)).header()])]
    result = process(state, fixed, PRICER, NOW, "e")
    assert not result.dead and [r[1] for r in result.rows] == [old["event_id"]]


def test_the_policy_is_the_one_given():
    state = PartitionState(0)
    old = ev(ts="2026-10-01T00:00:00Z")
    strict = EventTime(max_age_days=1, max_skew_s=0)
    result = process(state, records(old), PRICER, NOW, "e", event_time=EventTime(60, 300))
    assert not result.dead and len(result.rows) == 1
    result = process(state, records(ev(ts="2026-11-22T11:59:59Z")), PRICER, NOW, "e", (), strict)
    assert "more than 1 days in the past" in result.dead[0].error
    result = process(state, records(ev(ts="2026-11-23T12:00:01Z")), PRICER, NOW, "e", (), strict)
    assert "more than 0 s in the future" in result.dead[0].error


def test_history_sent_with_its_backfill_range_is_counted_in_its_day():
    state = PartitionState(0)
    history = Backfill(date(2026, 9, 1), date(2026, 10, 1))
    inside = ev(ts="2026-09-30T23:59:59.999Z", input_tokens=7, output_tokens=0)
    outside = ev(ts="2026-10-01T00:00:00Z")
    ahead = ev(ts="2026-11-24T00:00:00Z")
    marked = [
        Record(i, orjson.dumps(e), [("x", b"1"), history.header()])
        for i, e in enumerate((inside, outside, ahead))
    ]
    malformed = Record(3, orjson.dumps(ev(ts="2026-09-15T00:00:00Z")), [(BACKFILL_HEADER, b"?")])
    result = process(state, [*marked, malformed], PRICER, NOW, "e")
    assert [r[1] for r in result.rows] == [inside["event_id"]]
    day = counters.epoch_day(datetime(2026, 9, 30, tzinfo=UTC))
    assert result.deltas[("o", counters.TOKENS, day)] == 7
    assert [(d.offset, d.error.split(" (TALLY")[0]) for d in result.dead] == [
        (1, "ts: 2026-10-01T00:00:00Z is more than 35 days in the past"),
        (2, "ts: 2026-11-24T00:00:00Z is more than 300 s in the future"),
        (3, "ts: 2026-09-15T00:00:00Z is more than 35 days in the past"),
    ]
    assert "outside the backfill range it was sent with (--from 2026-09-01 --to 2026-10-01)" in (
        result.dead[0].error
    )


def test_a_copy_of_a_counted_event_that_has_become_old_is_a_duplicate_not_a_dead_letter():
    state = PartitionState(0)
    old = ev(ts="2026-10-01T00:00:00Z")
    state.seen[old["event_id"]] = NOW.timestamp() - 60  # counted when it was recent
    pending = process(state, records(ev(event_id="p")), PRICER, NOW, "e")
    result = process(
        state,
        records(old, ev(event_id="p", ts="2026-10-01T00:00:00Z"), start=1),
        PRICER,
        NOW,
        "e",
        pending=[pending],
    )
    assert (result.duplicates, result.dead, result.rows) == (2, [], [])


def test_sessions_survive_reordering_and_duplicates():
    state = PartitionState(0)
    key = ("o", counters.SESSIONS, 0)

    def session(type, session_id):
        return ev(type, session_id=session_id, run_id=None)  # no run: sessions alone

    end_a = session("session.ended", "a")
    _, changed = run(state, end_a)  # ended before started: never active
    assert changed == {}
    _, changed = run(state, session("session.started", "a"), session("session.started", "b"))
    assert changed == {key: 1}
    _, changed = run(state, session("session.started", "b"), end_a)
    assert changed == {}  # a new duplicate start of b and a replayed end of a change nothing
    _, changed = run(state, session("session.ended", "b"))
    assert changed == {key: 0}
    assert state.sessions == {}


def test_unknown_models_are_stored_and_flagged_unpriced():
    state = PartitionState(0)
    result, changed = run(state, ev(model="mystery-1"))
    assert result.rows[0][13] == 0  # priced
    assert changed[("o", counters.UNPRICED, DAY)] == 1
    assert ("o", "cost.llm", DAY) not in changed


def test_forget_before_drops_only_old_ids():
    state = PartitionState(0)
    state.seen = {"a": 1.0, "b": 2.0, "c": 3.0}
    state.forget_before(2.5)
    assert list(state.seen) == ["c"]


def test_expire_keeps_what_quota_reads_need():
    state = PartitionState(0)
    minute = counters.epoch_minute(NOW)
    state.counters = {
        ("o", counters.TOKENS, DAY): 1,
        ("o", counters.TOKENS, DAY - 69): 2,
        ("o", counters.TOKENS, DAY - 71): 3,
        ("o", counters.REQUESTS_MINUTE, minute - 5): 4,
        ("o", counters.REQUESTS_MINUTE, minute - 500): 5,
        ("o", counters.SESSIONS, 0): 6,
    }
    state.seen = {"old": NOW.timestamp() - 90_000, "new": NOW.timestamp() - 10}
    state.expire(NOW, 86_400)
    assert sorted(state.counters.values()) == [1, 2, 4, 6]
    assert list(state.seen) == ["new"]


def test_a_batch_prepared_while_the_previous_one_is_stored_sees_it():
    state = PartitionState(0)
    first = process(
        state, records(ev(event_id="x"), ev("session.started", session_id="s")), PRICER, NOW, "e"
    )
    second = process(
        state,
        records(ev(event_id="x"), ev("session.ended", session_id="s"), start=2),
        PRICER,
        NOW,
        "e",
        pending=[first],
    )
    assert second.duplicates == 1 and len(second.rows) == 1
    apply(state, first)
    changed = apply(state, second)
    assert changed[("o", counters.SESSIONS, 0)] == 0
    assert state.sessions == {} and state.next_offset == 4


def test_an_event_in_any_batch_still_being_stored_is_a_duplicate():
    state = PartitionState(0)
    first = process(state, records(ev(event_id="a"), ev(event_id="b")), PRICER, NOW, "e")
    second = process(state, records(ev(event_id="c"), start=2), PRICER, NOW, "e", pending=[first])
    third = process(
        state,
        records(ev(event_id="a"), ev(event_id="c"), ev(event_id="d"), start=3),
        PRICER,
        NOW,
        "e",
        pending=[first, second],
    )
    assert third.duplicates == 2 and [r[1] for r in third.rows] == ["d"]
    assert (third.last_offset, third.event_ids) == (5, {"d"})


def test_counters_published_before_the_store_are_what_apply_makes_of_them():
    state = PartitionState(0)
    run(state, ev(input_tokens=100, output_tokens=0))
    first = process(state, records(ev(input_tokens=10), start=1), PRICER, NOW, "e")
    second = process(
        state,
        records(ev(input_tokens=1), ev("tool.call", connector="github"), start=2),
        PRICER,
        NOW,
        "e",
        pending=[first],
    )
    early_first = projected(state, first)
    early_second = projected(state, second, pending=[first])
    apply(state, first)
    assert early_first == {k: state.counters[k] for k in first.deltas}
    apply(state, second)
    assert early_second == {k: state.counters[k] for k in second.deltas}
    assert early_second[("o", counters.TOKENS, DAY)] == 111 + 2 * make_event()["output_tokens"]


def orgs_on(partitions: int) -> dict[int, str]:
    """One org id per partition, as Kafka's default partitioner maps them."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        found.setdefault(partition_of(f"org-{i}", partitions), f"org-{i}")
        i += 1
    return found


def test_an_event_of_an_org_that_maps_elsewhere_is_forwarded_there_and_not_counted():
    orgs = orgs_on(6)
    state = PartitionState(2, partitions=6, next_offset=7)
    here, there = ev(org_id=orgs[2]), ev(org_id=orgs[5], event_id="moved")
    raw = records(there, start=8)[0]
    traced = Record(raw.offset, raw.value, [("trace", b"t-1")])
    result = process(state, [*records(here, start=7), traced], PRICER, NOW, "e")

    assert [r[0] for r in result.rows] == [orgs[2]]
    assert all(key[0] == orgs[2] for key in result.deltas)
    (forward,) = result.forwards
    assert (forward.org_id, forward.partition, forward.source, forward.offset) == (
        orgs[5],
        5,
        2,
        8,
    )
    assert forward.value == traced.value
    assert list(forward.headers) == [("trace", b"t-1"), (FORWARDED_FROM, b"2/8"), (HOPS, b"1")]
    changed = apply(state, result)
    assert "moved" not in state.seen and state.next_offset == 9
    assert {k[0] for k in changed} == {orgs[2]}


def test_the_same_event_on_its_own_partition_is_counted_once():
    orgs = orgs_on(6)
    state = PartitionState(5, partitions=6)
    e = ev(org_id=orgs[5], event_id="moved")
    forwarded = Record(0, orjson.dumps(e), [(FORWARDED_FROM, b"2/8"), (HOPS, b"1")])
    result = process(state, [forwarded, *records(e, start=1)], PRICER, NOW, "e")
    assert (len(result.rows), result.duplicates, result.forwards) == (1, 1, [])


def test_an_event_still_misrouted_after_many_forwards_is_a_dead_letter():
    orgs = orgs_on(4)
    state = PartitionState(0, partitions=4)
    e = orjson.dumps(ev(org_id=orgs[3]))
    again = Record(0, e, [(HOPS, str(MAX_HOPS - 1).encode())])
    looping = Record(1, e, [(HOPS, str(MAX_HOPS).encode())])
    result = process(state, [again, looping], PRICER, NOW, "e")
    assert [f.offset for f in result.forwards] == [0]
    assert dict(result.forwards[0].headers)[HOPS] == str(MAX_HOPS).encode()
    (dead,) = result.dead
    assert (dead.offset, dead.value, dead.partition) == (1, e, 0)
    assert dead.error.startswith(
        f"misrouted: org_id {orgs[3]!r} belongs to partition 3 of 4, not 0, and was forwarded"
    )
    assert "tally dlq replay" in dead.error and reason_class(dead.error) == "misrouted"
    assert not result.rows


def test_a_state_without_a_partition_count_checks_no_keys():
    state = PartitionState(0)
    result, _ = run(state, *(ev(org_id=org) for org in orgs_on(4).values()))
    assert len(result.rows) == 4 and not result.forwards
