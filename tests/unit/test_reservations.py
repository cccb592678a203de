"""Reservations decided in log order: the rules (tally.domain.reservations) and the worker's
definition of them (streams.admissions, through streams.batch), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from streams.batch import PartitionState, Record, apply, process
from tally.catalogue import load_prices
from tally.domain import counters
from tally.domain.pricing import Pricer
from tally.domain.reservations import Hold, admit, held, lapse, settles
from tests.factories import make_event

PRICER = Pricer(load_prices())
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
T0 = datetime(2026, 11, 23, 11, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_admit_counts_used_and_held_and_lapses_by_the_orgs_clock():
    holds = {"a": Hold("tokens", 600, at(10))}
    v = admit(holds, "b", "tokens", 500, 1_000, 0, at(1), at(11))
    assert not v.allowed and v.used == 600  # 0 used + 600 held + 500 > 1,000
    v = admit(holds, "b", "tokens", 400, 1_000, 0, at(1), at(11))
    assert v.allowed and held(v.holds, "tokens") == 1_000
    # At the clock of a later request, `a` has lapsed.
    v = admit(v.holds, "c", "tokens", 600, 1_000, 0, at(10), at(20))
    assert v.allowed and set(v.holds) == {"b", "c"}
    assert lapse(v.holds, at(11)) == {"c": Hold("tokens", 600, at(20))}


def test_a_request_read_again_is_admitted_once():
    v = admit({}, "a", "sessions", 1, 1, 0, at(0), at(10))
    again = admit(v.holds, "a", "sessions", 1, 1, 0, at(0), at(10))
    assert again.allowed and again.holds == v.holds


def test_what_an_event_settles():
    holds = {"x": Hold("sessions", 1, at(9)), "y": Hold("sessions", 1, at(5))}
    assert settles(holds, "x", session_start=True) == "x"
    assert settles(holds, "", session_start=True) == "y"  # the oldest session reservation
    assert settles(holds, "", session_start=False) is None
    assert settles(holds, "gone", session_start=False) is None


def request(rid: str, s: float, meter: str = "sessions", amount: int = 1, limit: int = 3) -> dict:
    extra = {}
    if meter != "sessions":
        extra = {"window_start": "2026-11-01T00:00:00Z", "window_end": "2026-12-01T00:00:00Z"}
    return make_event(
        "admission.requested",
        org_id="o",
        session_id=None,
        reservation_id=rid,
        meter=meter,
        amount=amount,
        limit=limit,
        ts=at(s).isoformat(),
        expires_at=at(s + 10).isoformat(),
        **extra,
    )


def records(events: list[dict], start: int = 0) -> list[Record]:
    return [Record(start + i, orjson.dumps(e)) for i, e in enumerate(events)]


def decisions(result) -> list[tuple[str, str]]:
    return [(row[1], row[6]) for row in result.reservations]


LOG = [
    make_event("session.started", org_id="o", session_id="s1", ts=at(0).isoformat()),
    *(request(f"r{i}", 1) for i in range(4)),  # 1 running: two admitted, two refused
    make_event("session.ended", org_id="o", session_id="s1", ts=at(2).isoformat()),
    request("r4", 3),  # a slot freed: admitted
    request("r5", 3),  # full again
    make_event(
        "session.started", org_id="o", session_id="s2", reservation_id="r0", ts=at(4).isoformat()
    ),  # settles r0: still full (1 running + 2 held)
    request("r6", 5),
    request("r7", 12),  # at 12, r1 (until 11) has lapsed
]


def test_the_worker_decides_in_log_order_against_exact_figures():
    state = PartitionState(0)
    result = process(state, records(LOG), PRICER, NOW, "e")
    assert decisions(result) == [
        ("r0", "held"),
        ("r1", "held"),
        ("r2", "refused"),
        ("r3", "refused"),
        ("r4", "held"),
        ("r5", "refused"),
        ("r0", "settled"),
        ("r6", "refused"),
        ("r7", "held"),  # at 12 r1 (11) has lapsed; r4 (13) holds; s2 runs: 1 + 1 + 1 = 3
    ]
    apply(state, result)
    assert set(state.holds["o"]) == {"r4", "r7"}
    assert state.counters[("o", counters.RESERVED_PREFIX + "sessions", 0)] == 2
    assert state.clocks["o"] == at(12)
    # Requests are decisions, not usage: nothing stored as an event, nothing billed.
    assert {row[2] for row in result.rows} == {"session.started", "session.ended"}


def test_the_decisions_do_not_depend_on_where_batches_end():
    whole = process(PartitionState(0), records(LOG), PRICER, NOW, "e")
    for cut in range(1, len(LOG)):
        state = PartitionState(0)
        first = process(state, records(LOG[:cut]), PRICER, NOW, "e")
        # The second batch is prepared while the first is being stored (not yet applied).
        second = process(state, records(LOG[cut:], cut), PRICER, NOW, "e", [first])
        assert decisions(first) + decisions(second) == decisions(whole), cut
        apply(state, first)
        apply(state, second)
        assert set(state.holds["o"]) == {"r4", "r7"}


def test_token_reservations_count_the_usage_before_them_in_the_window():
    usage = make_event(
        "llm.usage", org_id="o", input_tokens=9_000, output_tokens=0, ts=at(0).isoformat()
    )
    log = [usage, *(request(f"t{i}", 1, "tokens", 400, 10_000) for i in range(3))]
    log.append(
        make_event(
            "llm.usage",
            org_id="o",
            input_tokens=100,
            output_tokens=0,
            reservation_id="t0",
            ts=at(2).isoformat(),
        )
    )
    log.append(request("t3", 3, "tokens", 400, 10_000))
    result = process(PartitionState(0), records(log), PRICER, NOW, "e")
    # 9,000 used: two of 400 fit; t0 settles with 100 used: 9,100 + 400 held + 400 = 9,900.
    assert decisions(result) == [
        ("t0", "held"),
        ("t1", "held"),
        ("t2", "refused"),
        ("t0", "settled"),
        ("t3", "held"),
    ]
    assert result.reservations[-1][5] == 9_500  # the figure it decided on: used + held
