"""A fetch a column at a time (streams.columns) gives what the definition, an event at a time
(streams.batch.process), gives: the same counters, sessions, dead letters, forwards,
duplicates and rows, for any fetch; and it does take the common shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.prices import PriceBook
from streams import columns
from streams.batch import BatchResult, PartitionState, Record, event_block, process
from tally.bench.workload import generate
from tally.catalogue import load_prices
from tally.domain.partitioning import partition_of
from tally.domain.pricing import Pricer
from tests.factories import make_event

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
CHANGE = "2026-11-23T00:00:30Z"  # a rate change just after the earliest generated times
BOOK = PriceBook.model_validate(
    {
        "version": "test",
        "models": {
            "m-steady": [
                {
                    "effective_from": "2024-01-01T00:00:00Z",
                    "input_per_mtok": 3_000_001,
                    "cached_input_per_mtok": 7,
                    "output_per_mtok": 9_999_999,
                }
            ],
            "m-change": [
                {
                    "effective_from": "2024-01-01T00:00:00Z",
                    "input_per_mtok": 1,
                    "cached_input_per_mtok": 1,
                    "output_per_mtok": 1,
                },
                {
                    "effective_from": CHANGE,
                    "input_per_mtok": 2_000_000,
                    "cached_input_per_mtok": 500_000,
                    "output_per_mtok": 8_000_000,
                },
            ],
        },
        "connectors": {
            "c-priced": [{"effective_from": "2024-01-01T00:00:00Z", "per_call": 2_000}],
            "c-change": [
                {"effective_from": "2024-01-01T00:00:00Z", "per_call": 1},
                {"effective_from": CHANGE, "per_call": 3_000},
            ],
        },
        "storage": {
            "knowledge_base": [{"effective_from": "2024-01-01T00:00:00Z", "per_gb_month": 700}]
        },
    }
)
# The catalogue's book (with a default connector rate) and one without a default, with rates
# that change inside the generated times.
PRICERS = [Pricer(load_prices()), Pricer(BOOK)]
IDS = [f"ev-{i}" for i in range(40)]
# Orgs of one partition of four, and now and then one of another partition (forwarded).
HOME = [o for o in (f"o{i}" for i in range(40)) if partition_of(o, 4) == partition_of("o1", 4)]
AWAY = next(o for o in (f"o{i}" for i in range(40)) if partition_of(o, 4) != partition_of("o1", 4))
ORGS = HOME[:3]


def wire_time(t: datetime, form: int, digits: int, extra: str) -> str:
    """`t` written in one of the RFC 3339 forms producers use."""
    offset = [timedelta(0), timedelta(0), timedelta(hours=5, minutes=30), -timedelta(hours=1)][
        form % 4
    ]
    local = t + offset
    text = local.strftime("%Y-%m-%d") + ("T" if form % 8 < 6 else " ") + local.strftime("%H:%M:%S")
    if digits:
        text += "." + (f"{local.microsecond:06d}" + extra)[:digits]
    suffix = ["Z", "+00:00", "+05:30", "-01:00"][form % 4]
    if form == 157:  # (hypothesis favours the bounds of a range: not one of them)
        suffix = "z"  # the contract takes it; the fast path leaves it to pydantic
    return text + suffix


times = st.builds(
    wire_time,
    st.datetimes(
        min_value=datetime(2026, 11, 22, 23, 58), max_value=datetime(2026, 11, 23, 12)
    ).map(lambda t: t.replace(tzinfo=UTC)),
    st.integers(0, 300),
    st.integers(0, 9),
    st.text("0123456789", min_size=3, max_size=3),
)
tokens = st.integers(0, 300).map(lambda i: 10**12 if i == 157 else i * 17)  # 10**12 overflows


@st.composite
def events(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["llm.usage"] * 4
            + ["tool.call"] * 3
            + ["gateway.request"] * 2
            + ["session.started", "session.ended", "storage.usage"]
        )
    )
    event = make_event(
        kind,
        event_id=draw(st.sampled_from(IDS)),
        org_id=draw(st.sampled_from(ORGS)) if draw(st.integers(0, 300)) != 157 else AWAY,
        agent_id=draw(st.sampled_from(["a1", "a2"])),
        run_id=draw(st.sampled_from([None, "r1", "r2", ...])),
        session_id=draw(st.sampled_from(["s1", "s2"])),
        key_mode=draw(st.sampled_from(["live", "live", "test"])),
        ts=draw(times),
    )
    if kind == "llm.usage":
        inp = draw(tokens)
        event.update(
            model=draw(st.sampled_from(["gpt-4o", "gpt-4o-mini", "m-steady", "m-change", "x"])),
            input_tokens=inp,
            output_tokens=draw(tokens),
            # now and then more than the input tokens: refused
            cached_input_tokens=draw(st.integers(0, inp)) + (draw(st.integers(0, 300)) == 157),
        )
        for name, value in (("cached_input_tokens", ...), ("mode", "byok"), ("mode", ...)):
            if draw(st.booleans()):
                event[name] = value
    elif kind == "tool.call":
        event.update(
            connector=draw(st.sampled_from(["github", "slack", "c-priced", "c-change", "y"])),
            success=draw(st.booleans()),
        )
    elif kind == "gateway.request":
        for name, value in (("cache_hit", True), ("cache_hit", ...), ("mode", "byok")):
            if draw(st.booleans()):
                event[name] = value
    elif kind == "storage.usage":
        event["byte_seconds"] = draw(st.integers(0, 10**15))
    if draw(st.integers(0, 30)) == 0:
        event["unknown_field"] = {"nested": [1, 2]}  # ignored by the contract
    event = {k: v for k, v in event.items() if v is not ...}
    raw = orjson.dumps(event)
    if draw(st.integers(0, 1_000)) == 513:  # now and then one the contract refuses
        return draw(st.sampled_from([b"{oops", b"", orjson.dumps({"type": "x"})]))
    return raw


@st.composite
def fetches(draw: st.DrawFn) -> tuple[PartitionState, list[Record], list[Record], Pricer]:
    partitions = draw(st.sampled_from([0, 0, 4]))
    partition = partition_of("o1", 4) if partitions else 0
    state = PartitionState(partition, partitions, next_offset=100)
    state.seen = {i: 1.0 for i in draw(st.lists(st.sampled_from(IDS), max_size=5))}
    for org in [*ORGS, AWAY]:
        for session in ("s1", "s2"):
            flags = draw(st.sampled_from([None, 1, 2]))
            if flags is not None:
                state.sessions[(org, session)] = flags
    before = draw(st.lists(events(), max_size=10))
    values = draw(st.lists(events(), min_size=1, max_size=40))
    earlier = [Record(100 + i, v) for i, v in enumerate(before)]
    fetch = [Record(100 + len(before) + i, v) for i, v in enumerate(values)]
    return state, earlier, fetch, draw(st.sampled_from(PRICERS))


def assert_same(got: BatchResult, want: BatchResult) -> None:
    """Every field of the two results alike; rows compared as stored, in offset order."""
    for name in (
        "partition",
        "last_offset",
        "last_crc",
        "epoch",
        "dead",
        "forwards",
        "deltas",
        "sessions",
        "event_ids",
        "duplicates",
        "ingested_at",
        "types",
    ):
        assert getattr(got, name) == getattr(want, name), name
    assert got.stored == want.stored
    assert stored(got).equals(stored(want))


def stored(result: BatchResult) -> pa.Table:
    blocks = [event_block(result.rows)]
    if result.block is not None:
        blocks.append(result.block)
    return pa.concat_tables(blocks).sort_by("offset")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fetches())
def test_a_fetch_gives_what_the_definition_gives(fetch):
    state, earlier, records, pricer = fetch
    pending = [process(state, earlier, pricer, NOW, "e")] if earlier else []
    want = process(state, records, pricer, NOW, "e", pending)
    # `take` has no threshold of size: fetches this small are taken a column at a time too.
    got = columns.take(state, records, pricer, NOW, "e", pending)
    event(f"taken a column at a time: {got is not None}")  # about nine in ten
    if got is not None:
        assert_same(got, want)
    assert_same(columns.process(state, records, pricer, NOW, "e", pending), want)


def test_a_fetch_of_the_common_shape_is_taken_a_column_at_a_time():
    workload = generate(3_000, orgs=20)
    records = [Record(i, value) for i, (_, value) in enumerate(workload.messages)]
    # with events seen before, in the batch before and repeated in this one
    seen = orjson.loads(records[5].value)["event_id"]
    earlier = [Record(9_000, records[7].value)]
    records.append(Record(3_000, records[11].value))
    state = PartitionState(0, next_offset=0)
    state.seen[seen] = 1.0
    state.sessions[("bench-org-0001", "s-3")] = 1
    pricer = PRICERS[0]
    pending = [process(state, earlier, pricer, NOW, "e")]
    got = columns.take(state, records, pricer, NOW, "e", pending)
    assert got is not None and got.block is not None and not got.rows
    want = process(state, records, pricer, NOW, "e", pending)
    assert want.duplicates == 3
    assert_same(got, want)


def test_sessions_and_storage_in_a_fetch_are_counted_with_it():
    values = [
        make_event("session.started", org_id="o1", session_id="s"),
        make_event(org_id="o1"),
        make_event("storage.usage", org_id="o1"),
        make_event("session.ended", org_id="o1", session_id="s"),
    ]
    records = [Record(i, orjson.dumps(v)) for i, v in enumerate(values)]
    state = PartitionState(0)
    got = columns.take(state, records, PRICERS[0], NOW, "e")
    assert got is not None and got.sessions == {("o1", "s"): 3}
    assert_same(got, process(state, records, PRICERS[0], NOW, "e"))


def one(**overrides: object) -> list[Record]:
    return [
        Record(0, orjson.dumps(make_event(org_id="o1"))),
        Record(1, orjson.dumps(make_event(**{"org_id": "o1", **overrides}))),
    ]


def test_other_fetches_go_to_the_definition_whole():
    """Each is taken event by event, and what it gives is the definition's."""
    misrouted = partition_of("o1", 4) + 1
    cases = [
        (PartitionState(0), [Record(0, b"{oops"), *one()[1:]], PRICERS[0]),  # a dead letter
        (PartitionState(misrouted % 4, 4), one(), PRICERS[0]),  # forwarded
        (PartitionState(0), one(ts="2026-11-23T10:00:00z"), PRICERS[0]),  # for pydantic
        (PartitionState(0), one(ts="2026-02-30T10:00:00Z"), PRICERS[0]),  # no such day
        (PartitionState(0), one(output_tokens=10**12), PRICERS[0]),  # beyond 64 bits
        (PartitionState(0), one(model="m-change", ts="2026-11-23T00:00:00Z"), PRICERS[1]),
    ]
    for state, records, pricer in cases:
        assert columns.take(state, records, pricer, NOW, "e") is None
        assert_same(
            columns.process(state, records, pricer, NOW, "e"),
            process(state, records, pricer, NOW, "e"),
        )


@settings(max_examples=300, deadline=None)
@given(times)
def test_times_are_read_as_python_reads_them(text):
    """Arrow's reading of an RFC 3339 time, fractions truncated to microseconds, is
    Python's: the rows and the day a counter falls in depend on it."""
    records = [Record(0, orjson.dumps(make_event(org_id="o1", ts=text)))]
    state = PartitionState(0)
    got = columns.take(state, records, PRICERS[0], NOW, "e")
    want = process(state, records, PRICERS[0], NOW, "e")
    if got is None:
        assert text.endswith("z")
    else:
        assert_same(got, want)
