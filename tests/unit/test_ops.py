"""Pure parts of the operations tooling: reason classes, logs, reconciliation arithmetic,
SQL builders, tables, progress, status verdicts, DLQ fix files."""

from __future__ import annotations

import io
import logging
from datetime import date
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from commands.ops import dlq, kafka
from commands.ops.status import PartitionStatus, Status, problems, render
from commands.ops.text import Progress, table
from schemas.events import InvalidEvent
from schemas.ops import ReconcileRequest
from streams.decode import decode
from tally import metrics
from tally.domain import reconcile as rec
from tally.domain.usage import Usage
from tally.logs import JsonFormatter, TextFormatter
from tally.store import ops as sql
from tests.factories import make_event, wire


def reason_of(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as exc:
        decode(raw)
    return metrics.reason_class(exc.value.reason)


def test_dead_letter_reasons_fall_into_a_few_classes():
    assert reason_of(b"not json") == "invalid_json"
    assert reason_of(wire(make_event() | {"type": "nope"})) == "unknown_type"
    assert reason_of(wire({k: v for k, v in make_event().items() if k != "type"})) == (
        "unknown_type"
    )
    assert reason_of(wire(make_event() | {"schema_version": 9})) == "schema_version"
    assert reason_of(wire({k: v for k, v in make_event().items() if k != "org_id"})) == (
        "missing_field"
    )
    assert reason_of(wire(make_event(input_tokens=-1))) == "invalid_field"
    assert metrics.reason_class("message has no value") == "no_value"


def test_lag_gauges_follow_the_partitions_owned():
    metrics.partition_lag({0: 5, 1: 7})
    metrics.partition_lag({1: 2})
    assert REGISTRY.get_sample_value("tally_consumer_lag_events", {"partition": "1"}) == 2
    assert REGISTRY.get_sample_value("tally_consumer_lag_events", {"partition": "0"}) is None


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tally.worker", logging.INFO, "f.py", 1, "at %d", (3,), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_json_logs_are_one_object_per_line_with_their_context():
    line = JsonFormatter().format(_record(partition=3, offset=120, org="acme"))
    assert "\n" not in line
    out = orjson.loads(line)
    assert out["msg"] == "at 3" and out["level"] == "INFO" and out["logger"] == "tally.worker"
    assert (out["partition"], out["offset"], out["org"]) == (3, 120, "acme")
    assert out["ts"].endswith("+00:00")
    assert TextFormatter().format(_record(partition=3)).endswith("at 3 [partition=3]")


def test_json_logs_carry_exceptions():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record()
        record.exc_info = sys.exc_info()
    out = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in out["exc"]


DAY = date(2026, 11, 3)


def _usage(line_item: str, billable: int, cost: int) -> Usage:
    return Usage(line_item, "x", billable, billable, cost, True)


def test_reconcile_is_clean_when_the_three_sources_agree():
    broker: rec.Table = {}
    rec.add_usage(broker, "acme", DAY, _usage("llm", 100, 30))
    rec.add_usage(broker, "acme", DAY, _usage("tool_calls", 1, 5))
    rec.add_usage(broker, "acme", DAY, _usage("sessions", 0, 0))
    stored: rec.Table = {}
    rec.add_stored(stored, "acme", DAY, "llm", 1, 1, 100, 30)
    rec.add_stored(stored, "acme", DAY, "tool_calls", 1, 1, 1, 5)
    rec.add_stored(stored, "acme", DAY, "sessions", 1, 1, 0, 0)
    counters = {
        ("acme", DAY): {"tokens": 100, "tool_calls": 1, "cost.llm": 30, "cost.tool_calls": 5}
    }
    assert broker[("acme", DAY)]["events"] == 3
    assert rec.compare(broker, stored, stored, counters) == []


def test_reconcile_reports_loss_double_counting_and_counter_drift():
    broker: rec.Table = {("acme", DAY): {"events": 3, "tokens": 300}}
    seen: rec.Table = {("acme", DAY): {"events": 2, "rows": 2, "tokens": 200}}
    stored: rec.Table = {("acme", DAY): {"events": 2, "rows": 3, "tokens": 300}}
    counters: rec.Table = {("acme", DAY): {"tokens": 250}}
    found = {
        (d.check, d.figure): (d.expected, d.found)
        for d in rec.compare(broker, seen, stored, counters)
    }
    assert found == {
        ("broker/store", "events"): (3, 2),
        ("broker/store", "tokens"): (300, 200),
        ("store/counters", "tokens"): (300, 250),
        ("duplicates", "rows"): (2, 3),
    }


def test_reconcile_compares_the_rollup_with_the_rows_duplicates_included():
    stored: rec.Table = {("acme", DAY): {"events": 2, "rows": 3, "tokens": 300}}
    rollups: rec.Table = {}
    rec.add_rollup(rollups, "acme", DAY, "llm", 3, 300, 0)
    counters: rec.Table = {("acme", DAY): {"tokens": 300}}
    found = rec.compare(None, None, stored, counters, rollups=rollups)
    assert [(d.check, d.figure) for d in found] == [("duplicates", "rows")]
    rec.add_rollup(rollups, "acme", DAY, "llm", 1, 50, 0)  # a rollup row without its event
    found = rec.compare(None, None, stored, counters, rollups=rollups)
    assert {(d.check, d.figure, d.expected, d.found) for d in found} == {
        ("duplicates", "rows", 2, 3),
        ("store/rollups", "events", 3, 4),
        ("store/rollups", "tokens", 300, 350),
    }


def test_days_past_the_plan_retention_compare_the_rollup_with_the_counters():
    old, new = date(2026, 10, 1), DAY
    broker: rec.Table = {("acme", old): {"events": 5, "tokens": 50}, ("acme", new): {"events": 1}}
    stored: rec.Table = {("acme", new): {"events": 1, "rows": 1}}  # October's rows deleted
    rollups: rec.Table = {("acme", old): {"events": 5, "tokens": 50}, ("acme", new): {"events": 1}}
    counters: rec.Table = {("acme", old): {"tokens": 50}}
    retention = {"acme": date(2026, 10, 20)}
    assert rec.compare(broker, stored, stored, counters, None, rollups, retention) == []
    counters[("acme", old)]["tokens"] = 49
    (diff,) = rec.compare(broker, stored, stored, counters, None, rollups, retention)
    assert (diff.check, diff.day, diff.expected, diff.found) == ("rollups/counters", old, 50, 49)
    found = rec.compare(broker, stored, stored, counters, None, rollups)  # without retention
    assert {d.check for d in found} == {"broker/store", "store/rollups", "store/counters"}


def test_reconcile_skips_days_the_counters_no_longer_keep():
    stored: rec.Table = {("acme", DAY): {"events": 1, "rows": 1, "tokens": 5}}
    assert rec.compare(None, None, stored, {}, counter_days=set()) == []
    (diff,) = rec.compare(None, None, stored, {}, counter_days={DAY})
    assert (diff.figure, diff.expected, diff.found, diff.delta) == ("tokens", 5, 0, -5)


def test_reconcile_queries_bind_every_value():
    q, params = sql.reconcile_figures(
        DAY, date(2026, 11, 4), "o'--", [["e-1"], ["e-1", "e-2"]], [0, 5], [9, 10]
    )
    assert "o'--" not in q and "e-1" not in q
    assert params == {
        "start": DAY,
        "end": date(2026, 11, 4),
        "org": "o'--",
        "epochs": [["e-1"], ["e-1", "e-2"]],
        "lows": [0, 5],
        "highs": [9, 10],
    }
    q, params = sql.stored_event_ids(["a", "b"], ["acme"])
    assert "IN {ids:Array(String)}" in q and params == {"ids": ["a", "b"], "orgs": ["acme"]}
    with pytest.raises(ValueError):
        sql.stored_event_ids(["x"] * (sql.MAX_LOOKUP + 1))


def test_reconcile_request_wants_a_bounded_window():
    ok = ReconcileRequest.model_validate({"from": "2026-11-01", "to": "2026-12-01"})
    assert ok.start == date(2026, 11, 1)
    for body in (
        {"from": "2026-11-02", "to": "2026-11-01"},
        {"from": "2020-01-01", "to": "2026-01-01"},
    ):
        with pytest.raises(ValueError):
            ReconcileRequest.model_validate(body)


def test_tables_align_numbers_right():
    text = table(["name", "n"], [["a", 5], ["bbb", 1234], ["c", None]])
    assert text.splitlines() == ["name     n", "a        5", "bbb   1234", "c        -"]


def test_progress_off_a_terminal_is_a_line_per_tenth_and_a_last_one():
    out = io.StringIO()
    progress = Progress(1000, "load", out)
    for _ in range(40):
        progress.advance(25)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("load: [##############################] 1,000/1,000 (100%)")
    assert len(set(lines)) == len(lines)


def _status(**kw: object) -> Status:
    status = Status("127.0.0.1:9092", "http://127.0.0.1:8080", ready=True)
    status.checks = {"store": True, "worker": True, "counter_table": True}
    status.staleness_s = 0.4
    status.dlq_size = 2
    status.partitions = [PartitionStatus(0, 100, 100, 0), PartitionStatus(1, 50, 20, 30)]
    for k, v in kw.items():
        setattr(status, k, v)
    return status


def test_status_is_healthy_when_all_answer_and_keep_up():
    status = _status()
    assert problems(status, max_lag=100, max_staleness_s=15) == []
    assert status.lag == 30


def test_status_names_each_problem():
    status = _status(checks={"store": False, "worker": True}, staleness_s=40.0)
    found = problems(status, max_lag=10, max_staleness_s=15)
    assert found == [
        "store: not ready",
        "counters: 40.0s stale (more than 15s): is the worker running and the store up?",
        "partition 1: 30 events behind (more than 10)",
    ]
    status.problems = found
    text = render(status)
    assert "UNHEALTHY" in text and "  - store: not ready" in text
    down = _status(broker_error="unreachable", api_error="refused", partitions=[])
    assert problems(down, 10, 15) == ["broker: unreachable", "api: refused"]


def test_a_partition_never_committed_lags_by_its_whole_log():
    assert PartitionStatus(0, 70, None, None).lag == 70


def test_fix_files_take_dlq_lines_with_fixed_values_or_plain_events(tmp_path: Path):
    event = make_event()
    path = tmp_path / "fix.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                orjson.dumps(
                    {"dlq_offset": 4, "error": "x", "value": orjson.dumps(event).decode()}
                ),
                orjson.dumps({"dlq_offset": 5, "error": "x", "value": event}),
                orjson.dumps(event),
                b"",
                b"{broken",
            ]
        )
    )
    items, unreadable = dlq.fix_items(path)
    assert [w for w, _ in items] == [
        "fix.jsonl:1 (dlq offset 4)",
        "fix.jsonl:2 (dlq offset 5)",
        "fix.jsonl:3",
    ]
    assert all(decode(raw)["event_id"] == event["event_id"] for _, raw in items)
    assert [w for w, _ in unreadable] == ["fix.jsonl:5"]


def test_dead_letters_not_written_by_tally_are_shown_as_they_are():
    letter = dlq.parse(kafka.Message(0, 7, None, b"plain text", (), 0))
    assert (letter.error, letter.value, letter.partition) == (
        "not a Tally dead letter",
        "plain text",
        None,
    )
    body = {"error": "ts: bad", "partition": 2, "offset": 9, "value": "{}"}
    letter = dlq.parse(kafka.Message(0, 8, None, orjson.dumps(body), (), 0))
    assert letter.as_json() == {"dlq_offset": 8, **body}
