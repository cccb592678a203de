"""A fetch a column at a time (streams.columns) gives what the definition, an event at a time
(streams.batch.process), gives: the same counters, sessions, dead letters, forwards,
duplicates and rows, for any fetch; and it does take the common shape."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from commands.bench.workload import generate
from schemas.prices import PriceBook
from streams import columns
from streams.batch import BatchResult, PartitionState, Record, process
from streams.rows import event_block
from streams.runs import key as run_key
from tally.catalogue import load_prices
from tally.domain import counters
from tally.domain.eventtime import Backfill, EventTime
from tally.domain.leases import Lease
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
LEASE_SEEN = "2026-11-23T00:00:00.5Z"  # a lease's last activity, in the generated times
LEASE_AT = datetime(2026, 11, 23, 0, 0, 0, 500_000, tzinfo=UTC)


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
# Now and then a time at an edge of the event-time policy (35 days back, 300 s ahead, to the
# microsecond), or well past either: refused, or taken as history with a backfill header.
OLDEST, NEWEST = NOW - timedelta(days=35), NOW + timedelta(seconds=300)
edge_times = st.builds(
    wire_time,
    st.sampled_from(
        [OLDEST, NEWEST, OLDEST - timedelta(days=20), NEWEST + timedelta(days=1)]
    ).flatmap(
        lambda t: st.integers(-1_500_000, 1_500_000).map(lambda us: t + timedelta(microseconds=us))
    ),
    st.integers(0, 300),
    st.integers(0, 9),
    st.text("0123456789", min_size=3, max_size=3),
)
event_times = st.integers(0, 25).flatmap(lambda i: edge_times if i == 0 else times)
# The headers a message may carry: none, a backfill range that holds the old times, one that
# does not, and one that names no range.
HISTORY = Backfill(date(2026, 9, 1), date(2026, 10, 20))
HEADERS = st.sampled_from(
    [(), (), (), (), [HISTORY.header()], [Backfill(date(2026, 10, 1), date(2026, 10, 2)).header()]]
    + [[("tally-backfill", b"oops"), ("x", b"")]]
)
POLICIES = st.sampled_from([EventTime(), EventTime(), EventTime(60, 3600), EventTime(1, 0)])
tokens = st.integers(0, 300).map(lambda i: 10**12 if i == 157 else i * 17)  # 10**12 overflows


@st.composite
def events(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["llm.usage"] * 4
            + ["tool.call"] * 3
            + ["gateway.request"] * 2
            + ["session.started", "session.ended", "session.heartbeat", "storage.usage"]
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
        ts=draw(event_times),
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
        for name, value in (
            ("cached_input_tokens", ...),
            ("mode", "byok"),
            ("mode", ...),
            ("provider", "openai"),
            ("provider", "aws.bedrock"),
        ):
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
    elif kind == "session.ended":
        reason = draw(st.sampled_from([..., "ended", "expired", "expired", "ended_by_api"]))
        event["reason"] = reason
        if reason == "expired":  # judged at a lease the state holds, or at another time
            event["last_seen_at"] = draw(st.sampled_from([LEASE_SEEN, "2026-11-23T00:00:00Z"]))
    if draw(st.integers(0, 30)) == 0:
        event["unknown_field"] = {"nested": [1, 2]}  # ignored by the contract
    event = {k: v for k, v in event.items() if v is not ...}
    raw = orjson.dumps(event)
    if draw(st.integers(0, 1_000)) == 513:  # now and then one the contract refuses
        return draw(st.sampled_from([b"{oops", b"", orjson.dumps({"type": "x"})]))
    return raw


@st.composite
def fetches(
    draw: st.DrawFn,
) -> tuple[PartitionState, list[Record], list[Record], Pricer, EventTime]:
    partitions = draw(st.sampled_from([0, 0, 4]))
    partition = partition_of("o1", 4) if partitions else 0
    state = PartitionState(partition, partitions, next_offset=100)
    state.seen = {i: 1.0 for i in draw(st.lists(st.sampled_from(IDS), max_size=5))}
    for org in [*ORGS, AWAY]:
        for session in ("s1", "s2"):
            flags = draw(st.sampled_from([None, 1, 2]))
            if flags is not None:
                state.sessions[(org, session)] = flags
            if flags == 1 and draw(st.booleans()):
                state.leases[(org, session)] = Lease(LEASE_AT, "a1", "r1")
    today = counters.epoch_day(NOW)
    for org in ORGS:
        for run_id in ("r1", "r2"):
            days = draw(st.sets(st.sampled_from([today - k for k in (40, 35, 20, 1, 0)])))
            if days:  # active days before: a new one goes before, between or after them
                state.runs[run_key(org, run_id)] = tuple(sorted(days))
    before = draw(st.lists(events(), max_size=10))
    values = draw(st.lists(events(), min_size=1, max_size=40))
    earlier = [Record(100 + i, v, draw(HEADERS)) for i, v in enumerate(before)]
    fetch = [Record(100 + len(before) + i, v, draw(HEADERS)) for i, v in enumerate(values)]
    return state, earlier, fetch, draw(st.sampled_from(PRICERS)), draw(POLICIES)


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
        "runs",
        "sessions",
        "leases",
        "ends",
        "voided",
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
    state, earlier, records, pricer, policy = fetch
    pending = [process(state, earlier, pricer, NOW, "e", (), policy)] if earlier else []
    want = process(state, records, pricer, NOW, "e", pending, policy)
    # `take` has no threshold of size: fetches this small are taken a column at a time too.
    got = columns.take(state, records, pricer, NOW, "e", pending, policy)
    event(f"taken a column at a time: {got is not None}")  # about nine in ten
    event(f"refused for their time: {sum(d.error.startswith('ts: ') for d in want.dead) > 0}")
    if got is not None:
        assert_same(got, want)
    assert_same(columns.process(state, records, pricer, NOW, "e", pending, policy), want)


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
    now = datetime.now(UTC)  # the workload's events are of the last hour
    pending = [process(state, earlier, pricer, now, "e")]
    got = columns.take(state, records, pricer, now, "e", pending)
    assert got is not None and got.block is not None and not got.rows
    want = process(state, records, pricer, now, "e", pending)
    assert want.duplicates == 3
    assert_same(got, want)


def test_sessions_and_storage_in_a_fetch_are_counted_with_it():
    at = {"org_id": "o1", "ts": "2026-11-23T10:00:00Z"}
    values = [
        make_event("session.started", session_id="s", **at),
        make_event(**at),
        make_event("storage.usage", **at),
        make_event("session.ended", session_id="s", **at),
    ]
    records = [Record(i, orjson.dumps(v)) for i, v in enumerate(values)]
    state = PartitionState(0)
    got = columns.take(state, records, PRICERS[0], NOW, "e")
    assert got is not None and got.sessions == {("o1", "s"): 3}
    assert_same(got, process(state, records, PRICERS[0], NOW, "e"))


def one(**overrides: object) -> list[Record]:
    at = {"org_id": "o1", "ts": "2026-11-23T10:00:00Z"}
    return [
        Record(0, orjson.dumps(make_event(**at))),
        Record(1, orjson.dumps(make_event(**{**at, **overrides}))),
    ]


def history() -> list[Record]:
    header = [Backfill(date(2026, 9, 1), date(2026, 9, 2)).header()]
    return [
        Record(i, orjson.dumps(make_event(org_id="o1", ts=ts)), header)
        for i, ts in enumerate(["2026-09-01T10:00:00Z", "2026-11-23T10:00:00Z"])
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
        (PartitionState(0), one(ts="2026-10-19T11:59:59.999999Z"), PRICERS[0]),  # too old
        (PartitionState(0), one(ts="2026-11-23T12:05:00.000001Z"), PRICERS[0]),  # ahead
        (PartitionState(0), history(), PRICERS[0]),  # old, sent with its backfill range
    ]
    for state, records, pricer in cases:
        assert columns.take(state, records, pricer, NOW, "e") is None
        assert_same(
            columns.process(state, records, pricer, NOW, "e"),
            process(state, records, pricer, NOW, "e"),
        )
    # The limits are inclusive: events at both edges are taken a column at a time.
    edges = one(ts="2026-10-19T12:00:00Z")[1:] + one(ts="2026-11-23T12:05:00Z")
    assert columns.take(PartitionState(0), edges, PRICERS[0], NOW, "e") is not None


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


@settings(max_examples=300, deadline=None)
@given(edge_times)
def test_a_time_at_an_edge_of_the_event_time_policy_is_judged_alike(text):
    """To the microsecond, as Python reads it: a fetch the definition takes whole is taken a
    column at a time, and one with an event it refuses is left to it."""
    records = [Record(0, orjson.dumps(make_event(org_id="o1", ts=text)))]
    state = PartitionState(0)
    got = columns.take(state, records, PRICERS[0], NOW, "e")
    want = process(state, records, PRICERS[0], NOW, "e")
    event(f"refused: {bool(want.dead)}")
    if not text.endswith("z"):
        assert (got is None) == bool(want.dead)
    if got is not None:
        assert_same(got, want)
