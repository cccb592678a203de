"""HTTP ingestion: events/s through `POST /api/v2/events`, spans/s through `POST /v1/traces`.

Both are measured alike on the running Tally, served by uvicorn in this process: `clients`
clients each send their share of the requests in turn, and a request counts once its answer
is 200, which means every item in it is stored (end-to-end acknowledgement). The rate is the
items over the wall time from the first request to the last answer. Every span is a `chat`
span with token counts, one `llm.usage` event each, so the two rates compare like for like;
the OTLP bodies are protobuf, as the OpenTelemetry SDK's exporter sends them, 512 spans each
(its default batch), and the event batches are 500 events of JSON.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from api.app import create_app
from commands.bench.http import serving
from commands.runtime import Tally

EVENTS_PER_BATCH = 500
SPANS_PER_EXPORT = 512


def event_batch(n: int) -> bytes:
    """A JSON batch of `n` llm.usage events (the key gives the org)."""
    now = datetime.now(UTC).isoformat()
    return orjson.dumps(
        [
            {
                "event_id": str(uuid.uuid4()),
                "type": "llm.usage",
                "agent_id": f"agent-{i % 10}",
                "run_id": f"run-{i % 50}",
                "ts": now,
                "model": "gpt-4o-mini",
                "input_tokens": 1000,
                "output_tokens": 100,
            }
            for i in range(n)
        ]
    )


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span_export(n: int) -> bytes:
    """An OTLP protobuf export of `n` chat spans of one trace, as an instrumented agent's."""
    end = time.time_ns()
    trace = os.urandom(16)
    spans = [
        Span(
            trace_id=trace,
            span_id=os.urandom(8),
            name="chat gpt-4o-mini",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=end - 1_000_000,
            end_time_unix_nano=end,
            attributes=[
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.agent.id", f"agent-{i % 10}"),
                _kv("gen_ai.request.model", "gpt-4o-mini"),
                _kv("gen_ai.usage.input_tokens", 1000),
                _kv("gen_ai.usage.output_tokens", 100),
            ],
        )
        for i in range(n)
    ]
    resource = Resource(attributes=[_kv("service.name", "bench-agent")])
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )
    body: bytes = request.SerializeToString()
    return body


async def rate(
    url: str, headers: dict[str, str], bodies: list[bytes], items: int, clients: int
) -> float:
    """Items stored per second: `bodies` (each of `items` items) sent by `clients` clients."""
    queue = list(bodies)

    async def client() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            while queue:
                r = await http.post(url, content=queue.pop(), headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(bodies) * items / (time.perf_counter() - started)


async def ingest_rates(tally: Tally, requests: int, clients: int = 4) -> dict[str, Any]:
    """`POST /api/v2/events` events/s and `POST /v1/traces` spans/s, `requests` each."""
    assert tally.services is not None
    svc = tally.services
    org = await svc.registry.create_org(
        f"ingest-bench-{uuid.uuid4().hex[:8]}", "enterprise", datetime.now(UTC).date()
    )
    key, _ = await svc.registry.create_key(org.org_id, "live")
    auth = {"Authorization": f"Bearer {key}"}
    batches = [event_batch(EVENTS_PER_BATCH) for _ in range(requests)]
    exports = [span_export(SPANS_PER_EXPORT) for _ in range(requests)]
    async with serving(create_app(svc)) as url:
        events_eps = await rate(
            url + "/api/v2/events",
            {**auth, "Content-Type": "application/json"},
            batches,
            EVENTS_PER_BATCH,
            clients,
        )
        spans_ps = await rate(
            url + "/v1/traces",
            {**auth, "Content-Type": "application/x-protobuf"},
            exports,
            SPANS_PER_EXPORT,
            clients,
        )
    return {
        "ingest_requests": requests,
        "ingest_clients": clients,
        "ingest_events_eps": round(events_eps),
        "otlp_spans_per_s": round(spans_ps),
    }
