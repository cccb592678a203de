"""Prometheus metrics of a Tally process: one registry (prometheus_client's default).

The worker counts per batch, never per event: a batch carries its counts by type, and the
counters here move once per batch. Gauges that describe a state (lag, staleness) are set
when the state is read: the worker's lag at each heartbeat, the counter table's staleness
at each scrape. `tally up` runs worker and API in one process, so its `/metrics` shows
both halves; `tally worker --metrics-port` serves the worker's alone.

Quota checks: `quota_check(meter, code)` once per admission decision (`ok`,
`billing_limit_reached`, `rate_limited`, `plan_limit_error`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]

# Seconds: a batch phase is milliseconds to seconds; an HTTP quota read is microseconds.
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

events_stored = Counter("tally_events", "Events stored by the worker, by event type.", ["type"])
duplicates = Counter("tally_duplicates", "Events skipped as duplicates of a stored event_id.")
dead_letters = Counter(
    "tally_dead_letters",
    "Messages sent to usage.events.dlq, by reason class (see tally.metrics.reason_class).",
    ["reason"],
)
forwarded = Counter(
    "tally_forwarded",
    "Events the worker sent on to the partition their org_id maps to (a producer that does"
    " not key by org_id, or one still on the partition count from before an increase).",
)
worker_faults = Counter(
    "tally_worker_faults",
    "Worker: faults in its loop (a broker or store error that outlasted the clients' retries);"
    " after each it rebuilt its partitions from the store and read on from the stored marks.",
)
offset_gaps = Counter(
    "tally_offset_gaps",
    "Worker: gaps in a usage.events partition's offsets that stayed after being read again"
    " (Kafka transaction markers, records deleted by retention before they were counted).",
)
offset_hole_wait = Gauge(
    "tally_offset_hole_wait_seconds",
    "Worker: how long the oldest hole in a usage.events partition's offsets has been read"
    " again, waiting for it to fill (the embedded broker never has real gaps: it is waited"
    " out, never passed). 0 when there is none.",
)
stored_marks = Counter(
    "tally_stored_marks",
    "Worker: stored marks published on usage.stored (end-to-end acknowledgement).",
)
otlp_spans = Counter(
    "tally_otlp_spans",
    "API: spans received on POST /v1/traces, by outcome: `event` (a usage event), `ignored`"
    " (no usage: neither a model call nor a tool call, or a model call without token"
    " counts), `rejected` (refused, the reason in the answer's partial_success).",
    ["outcome"],
)
ingest_unconfirmed = Counter(
    "tally_ingest_not_stored_in_time",
    "API: POST /api/v2/events batches and POST /v1/traces exports answered 503 because their"
    " storage was not confirmed"
    " within TALLY_INGEST_WAIT_S (the client sends them again; duplicates are dropped).",
)
batches = Counter("tally_batches", "Batches stored and counted by the worker.")
consumer_lag = Gauge(
    "tally_consumer_lag_events",
    "Worker: events on the broker not yet counted (fetch high watermark - next offset).",
    ["partition"],
)
batch_seconds = Histogram(
    "tally_batch_seconds",
    "Worker: seconds per batch phase (process: decode to aggregate; store: dead letters and"
    " insert; publish: counters and commit).",
    ["phase"],
    buckets=_BATCH_BUCKETS,
)
insert_seconds = Histogram(
    "tally_store_insert_seconds",
    "Seconds per store insert, by table.",
    ["table"],
    buckets=_BATCH_BUCKETS,
)
store_errors = Counter(
    "tally_store_errors", "Store statements that failed (each retry counts).", ["op"]
)
staleness = Gauge(
    "tally_counter_staleness_seconds",
    "API: age of the oldest partition heartbeat in the counter table (-1 before the first).",
)
reported_lag = Gauge(
    "tally_counter_table_lag_events",
    "API: lag per partition as the worker last reported it on usage.counters.",
    ["partition"],
)
counter_keys = Gauge("tally_counter_table_keys", "API: counters held in memory.")
counter_table_ready = Gauge(
    "tally_counter_table_ready", "API: 1 once the counter table has caught up."
)
registry_refreshed_at = Gauge(
    "tally_registry_refreshed_timestamp_seconds",
    "API: when orgs, keys and subscriptions were last merged from the store (Unix time).",
)
registry_refresh_seconds = Histogram(
    "tally_registry_refresh_seconds",
    "API: seconds per refresh of orgs, keys and subscriptions from the store.",
    buckets=_BATCH_BUCKETS,
)
quota_checks = Counter(
    "tally_quota_checks", "Quota admission decisions, by meter and outcome code.", ["meter", "code"]
)
http_seconds = Histogram(
    "tally_http_request_seconds",
    "HTTP request latency by route template, method and status.",
    ["route", "method", "status"],
    buckets=_HTTP_BUCKETS,
)


def registry_refreshed(seconds: float) -> None:
    registry_refreshed_at.set_to_current_time()
    registry_refresh_seconds.observe(seconds)


def quota_check(meter: str, code: str) -> None:
    """Count one quota admission decision (`ok` or the error code it answered with)."""
    quota_checks.labels(meter, code).inc()


sessions_ended = Counter(
    "tally_sessions_ended",
    "Live sessions ended, by reason: ended (by the runtime), expired (the lease lapsed),"
    " ended_by_api.",
    ["reason"],
)
alerts_fired = Counter(
    "tally_alerts_fired", "Alerts stored (each id once per process), by event type.", ["type"]
)
webhook_attempts = Counter(
    "tally_webhook_attempts",
    "Webhook delivery attempts, by outcome: delivered, failed (to be retried or given up).",
    ["outcome"],
)
session_expiries_written = Counter(
    "tally_session_expiries_written",
    "Session.ended events with reason expired that the worker wrote for lapsed leases"
    " (written again after a crash, stored once).",
)


def batch_done(
    types: Mapping[str, int], duplicate_count: int, ends: Mapping[str, int] | None = None
) -> None:
    """Once per stored batch (per partition): events by type, duplicates skipped, sessions
    ended by reason."""
    batches.inc()
    for reason, n in (ends or {}).items():
        sessions_ended.labels(reason).inc(n)
    for kind, n in types.items():
        events_stored.labels(kind).inc(n)
    if duplicate_count:
        duplicates.inc(duplicate_count)


def dead_letter(error: str) -> None:
    dead_letters.labels(reason_class(error)).inc()


def reason_class(error: str) -> str:
    """A dead letter's reason, as one of a few classes (bounded label values).

    no_value, invalid_json, unknown_type, schema_version, misrouted, too_old, in_future,
    missing_field or invalid_field.
    """
    if error == "message has no value":
        return "no_value"
    if error.startswith(("event: is not valid JSON", "event: must be a JSON object")):
        return "invalid_json"
    if error.startswith("type: must be one of"):
        return "unknown_type"
    if error.startswith("schema_version"):
        return "schema_version"
    if error.startswith("misrouted:"):
        return "misrouted"
    if error.startswith("ts: "):  # the event-time policy (tally.domain.eventtime)
        if "(TALLY_MAX_EVENT_AGE_DAYS)" in error:
            return "too_old"
        if "(TALLY_MAX_EVENT_SKEW_S)" in error:
            return "in_future"
    if ": is required" in error:
        return "missing_field"
    return "invalid_field"


_lag_partitions: set[str] = set()


def partition_lag(lags: Mapping[int, int]) -> None:
    """The worker's lag per owned partition (labels of partitions it no longer owns go)."""
    owned = {str(p) for p in lags}
    for gone in _lag_partitions - owned:
        consumer_lag.remove(gone)
    _lag_partitions.clear()
    _lag_partitions.update(owned)
    for p, lag in lags.items():
        consumer_lag.labels(str(p)).set(lag)


class _CounterTable(Protocol):
    values: Any
    beats: dict[int, tuple[int, int]]
    ready: Any

    def staleness_s(self) -> float | None: ...


def counter_table(table: _CounterTable) -> None:
    """Read the counter table's state into its gauges (call at scrape time)."""
    age = table.staleness_s()
    staleness.set(-1 if age is None else age)
    for p, (_, lag) in table.beats.items():
        reported_lag.labels(str(p)).set(lag)
    counter_keys.set(len(table.values))
    counter_table_ready.set(1 if table.ready.is_set() else 0)


def exposition() -> bytes:
    """The text exposition of every metric of this process."""
    return _generate(REGISTRY)
