"""The pure batch path: decode, dedup, price, aggregate, apply."""

from datetime import UTC, datetime

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
    assert changed == {("o", counters.TOOL_CALLS, DAY): 1, ("o", "cost.tool_calls", DAY): 2000}


def test_invalid_messages_become_dead_letters_with_their_position():
    state = PartitionState(3, next_offset=10)
    result, _ = run(state, b"{oops", ev(input_tokens=-1), ev(), start=10)
    assert [(d.offset, d.partition) for d in result.dead] == [(10, 3), (11, 3)]
    assert "input_tokens" in result.dead[1].error
    assert len(result.rows) == 1 and state.next_offset == 13


def test_late_events_count_in_their_own_day():
    state = PartitionState(0)
    _, changed = run(state, ev(ts="2026-10-02T23:59:59Z", input_tokens=5, output_tokens=0))
    day = counters.epoch_day(datetime(2026, 10, 2, tzinfo=UTC))
    # 5 gpt-4o input tokens at 2.5 micro-units each: 12.5, rounded half up once per event
    assert changed == {
        ("o", counters.TOKENS, day): 5,
        ("o", "cost.llm", day): 13,
        ("o", counters.UPSTREAM_COST, day): 13,  # managed mode: the platform pays upstream
    }


def test_sessions_survive_reordering_and_duplicates():
    state = PartitionState(0)
    key = ("o", counters.SESSIONS, 0)
    end_a = ev("session.ended", session_id="a")
    _, changed = run(state, end_a)  # ended before started: never active
    assert changed == {}
    _, changed = run(
        state, ev("session.started", session_id="a"), ev("session.started", session_id="b")
    )
    assert changed == {key: 1}
    _, changed = run(state, ev("session.started", session_id="b"), end_a)
    assert changed == {}  # a new duplicate start of b and a replayed end of a change nothing
    _, changed = run(state, ev("session.ended", session_id="b"))
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
