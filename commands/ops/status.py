"""`tally status`: is Tally keeping up? From the broker and the API, never the store itself.

The broker answers the facts of the log: each partition's end, the worker group's committed
offset (so the lag, even when the worker is down) and the size of the DLQ. The API answers
for the store, the worker and the counter table (`/readyz`) and for the staleness of the
counters and the lag the worker last reported (`/metrics`). A chDB directory belongs to
the process running `tally up`, so asking its API is the only way to ask the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from commands.ops import kafka
from commands.ops.api import Api, ApiUnavailable
from commands.ops.text import table
from tally.config import DLQ_TOPIC, EVENTS_TOPIC


@dataclass
class PartitionStatus:
    partition: int
    end: int
    committed: int | None
    reported_lag: int | None  # the worker's own figure, from its last heartbeat

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


@dataclass
class Status:
    bootstrap: str
    api_url: str
    broker_error: str | None = None
    api_error: str | None = None
    ready: bool = False
    checks: dict[str, bool] = field(default_factory=dict)
    staleness_s: float | None = None
    partitions: list[PartitionStatus] = field(default_factory=list)
    dlq_size: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


async def collect(
    bootstrap: str,
    api: Api,
    group_id: str,
    max_lag: int,
    max_staleness_s: float,
) -> Status:
    status = Status(bootstrap, api.url)
    reported: dict[int, int] = {}
    try:
        status.ready, status.checks = await api.readiness()
        text = await api.metrics()
        status.staleness_s, reported = _from_metrics(text)
    except (ApiUnavailable, ValueError) as exc:
        status.api_error = str(exc)
    try:
        # One reader per topic: once a consumer is assigned partitions, its metadata
        # follows only their topic.
        async with kafka.reader(bootstrap) as consumer:
            ends = await kafka.log_ranges(consumer, EVENTS_TOPIC)
        async with kafka.reader(bootstrap) as consumer:
            dlq = await kafka.log_ranges(consumer, DLQ_TOPIC)
        async with kafka.group_reader(bootstrap, group_id) as group:
            commits = await kafka.committed(group, EVENTS_TOPIC, sorted(ends))
        status.dlq_size = sum(high - low for low, high in dlq.values())
        status.partitions = [
            PartitionStatus(p, high, commits.get(p), reported.get(p))
            for p, (_, high) in sorted(ends.items())
        ]
    except kafka.BrokerUnavailable as exc:
        status.broker_error = str(exc)
    status.problems = problems(status, max_lag, max_staleness_s)
    return status


def _from_metrics(text: str) -> tuple[float | None, dict[int, int]]:
    staleness: float | None = None
    lags: dict[int, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tally_counter_staleness_seconds" and sample.value >= 0:
                staleness = float(sample.value)
            elif sample.name == "tally_counter_table_lag_events":
                lags[int(sample.labels["partition"])] = int(sample.value)
    return staleness, lags


def problems(status: Status, max_lag: int, max_staleness_s: float) -> list[str]:
    """What makes the status unhealthy, in words an operator can act on."""
    out = []
    if status.broker_error:
        out.append(f"broker: {status.broker_error}")
    if status.api_error:
        out.append(f"api: {status.api_error}")
    else:
        out += [f"{name}: not ready" for name, ok in sorted(status.checks.items()) if not ok]
        if not status.ready and all(status.checks.values()):
            out.append("api: not ready")
        if status.staleness_s is None:
            out.append("counters: no worker heartbeat seen yet")
        elif status.staleness_s > max_staleness_s:
            out.append(
                f"counters: {status.staleness_s:.1f}s stale (more than {max_staleness_s:g}s):"
                " is the worker running and the store up?"
            )
    for p in status.partitions:
        if p.lag > max_lag:
            out.append(f"partition {p.partition}: {p.lag} events behind (more than {max_lag})")
    return out


def render(status: Status) -> str:
    def state(ok: bool) -> str:
        return "ok" if ok else "DOWN"

    api_ok = status.api_error is None
    rows: list[list[object]] = [
        ["broker", state(status.broker_error is None), status.bootstrap],
        ["api", state(api_ok), status.api_url],
    ]
    for name in ("store", "worker", "counter_table"):
        if name in status.checks:
            rows.append([name.replace("_", " "), "ok" if status.checks[name] else "NOT READY", ""])
    if api_ok:
        stale = "unknown" if status.staleness_s is None else f"{status.staleness_s:.1f}s"
        rows.append(["staleness", stale, "age of the counters (worker heartbeats)"])
    if status.dlq_size is not None:
        rows.append(["dead letters", str(status.dlq_size), f"messages on {DLQ_TOPIC}"])
    if status.partitions:
        rows.append(["lag", str(status.lag), f"events on {EVENTS_TOPIC} not yet counted"])
    out = [table(["component", "state", "detail"], rows)]
    if status.partitions:
        out.append("")
        out.append(
            table(
                ["partition", "end", "committed", "lag", "worker-reported lag"],
                [
                    [p.partition, p.end, p.committed, p.lag, p.reported_lag]
                    for p in status.partitions
                ],
            )
        )
    out.append("")
    if status.healthy:
        out.append("HEALTHY")
    else:
        out.append("UNHEALTHY")
        out += [f"  - {p}" for p in status.problems]
    return "\n".join(out)


def as_dict(status: Status) -> dict[str, object]:
    return {
        "healthy": status.healthy,
        "problems": status.problems,
        "broker": {"bootstrap": status.bootstrap, "error": status.broker_error},
        "api": {"url": status.api_url, "error": status.api_error, "checks": status.checks},
        "staleness_s": status.staleness_s,
        "dlq_size": status.dlq_size,
        "lag": status.lag,
        "partitions": [
            {
                "partition": p.partition,
                "end": p.end,
                "committed": p.committed,
                "lag": p.lag,
                "reported_lag": p.reported_lag,
            }
            for p in status.partitions
        ],
    }
