"""The pure batch path: decode, dedup, price, aggregate, apply."""

from datetime import UTC, datetime

import orjson

from streams.batch import PartitionState, Record, apply, process, projected
from tally.catalogue import load_prices
from tally.domain import counters
from tally.domain.pricing import Pricer
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
