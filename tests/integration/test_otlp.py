"""POST /v1/traces, tried as a new user would: an app instrumented with the OpenTelemetry SDK
exports the spans of an agent run to a running Tally (the real API served over HTTP, the
embedded broker, the worker and chDB) and sees its usage in the quota, the run and the
breakdown."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from api.app import create_app
from tally import failpoints
from tests.conftest import OrgFactory, bearer, rows_reach, stored_rows
from tests.integration.test_dashboard import serve
from tests.integration.test_emitter import tokens_reach

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}

# gpt-4o-mini in the price book: 150,000 micros per million input tokens, 75,000 cached,
# 600,000 output; web_search 5,000 per call.
CHATS = [(1_000_000, 200_000, 100_000), (500_000, 0, 50_000)]  # input, cached, output
TOKENS = 1_000_000 + 100_000 + 500_000 + 50_000
LLM_COST = (800_000 * 150_000 + 200_000 * 75_000 + 100_000 * 600_000) // 10**6 + (
    500_000 * 150_000 + 50_000 * 600_000
) // 10**6  # 195,000 + 105,000
TOOL_COST = 5_000  # the failed github call costs nothing


@pytest_asyncio.fixture
async def base_url(stack) -> AsyncIterator[str]:
    async with serve(create_app(stack.services)) as url:
        yield url


def agent_run(conversation: str, end: datetime | None = None) -> list[ReadableSpan]:
    """The spans an instrumented agent makes: invoke_agent -> 2x chat -> execute_tool ok +
    execute_tool ERROR, and an HTTP call that is no GenAI operation."""
    finished = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-app"}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("support-agent")
    end_ns = None if end is None else int(end.timestamp() * 1e9)
    agent = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "openai",
        "gen_ai.agent.id": "support-bot",
        "gen_ai.agent.name": "Support Bot",
        "gen_ai.conversation.id": conversation,
    }
    with tracer.start_as_current_span("invoke_agent Support Bot", attributes=agent) as root:
        for inp, cached, out in CHATS:
            chat = tracer.start_span(
                "chat gpt-4o-mini",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.response.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": inp,
                    "gen_ai.usage.cache_read.input_tokens": cached,
                    "gen_ai.usage.output_tokens": out,
                },
            )
            chat.end(end_ns)
        for tool, ok in (("web_search", True), ("github", False)):
            call = tracer.start_span(
                f"execute_tool {tool}",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool},
            )
            if not ok:
                call.set_status(Status(StatusCode.ERROR, "rate limited by the GitHub API"))
            call.end(end_ns)
        tracer.start_span("GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}).end()
        trace_id = root.get_span_context().trace_id
    provider.shutdown()
    spans = list(finished.get_finished_spans())
    assert len(spans) == 6 and all(s.context.trace_id == trace_id for s in spans)
    return spans


def run_id(spans: list[ReadableSpan]) -> str:
    return f"{spans[0].context.trace_id:032x}"


async def sdk_export(base_url: str, key: str, spans: list[ReadableSpan]) -> SpanExportResult:
    """The SDK's own OTLP/HTTP protobuf exporter, as an app configures it."""
    exporter = OTLPSpanExporter(
        endpoint=f"{base_url}/v1/traces", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    try:
        return await asyncio.to_thread(exporter.export, spans)
    finally:
        exporter.shutdown()


def otlp_json(spans: list[ReadableSpan]) -> bytes:
    """The same export in OTLP/JSON: the proto3 JSON mapping (lowerCamelCase keys, enums as
    integers), with trace and span ids in hex rather than base64."""
    document = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64decode(span[name]).hex()
    return json.dumps(document).encode()


async def post(base_url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(f"{base_url}/v1/traces", content=body, headers=headers)


async def get(client: httpx.AsyncClient, key: str, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def tool_calls_used(client: httpx.AsyncClient, key: str) -> int:
    return int((await get(client, key, "/api/v2/quota/tool-calls"))["used"])


async def assert_metered(client: httpx.AsyncClient, stack, org: str, key: str, run: str) -> None:
    """What the user checks: the quota reads, the run's line items and the breakdown."""
    await tokens_reach(client, key, TOKENS)
    await rows_reach(stack, org, 4)  # 2 chats + 2 tool calls; the agent and HTTP spans: none
    assert await tool_calls_used(client, key) == 1  # the failed call is recorded, not counted
    usage = await get(client, key, f"/api/v2/runs/{run}/usage")
    assert usage["agent_ids"] == ["support-bot"]
    lines = {
        (x["line_item"], x["item"]): (x["events"], x["quantity"], x["billable"], x["cost_micros"])
        for x in usage["line_items"]
    }
    assert lines == {
        ("llm", "gpt-4o-mini"): (2, TOKENS, TOKENS, LLM_COST),
        ("tool_calls", "web_search"): (1, 1, 1, TOOL_COST),
        ("tool_calls", "github"): (1, 1, 0, 0),
    }
    assert usage["total"]["cost_micros"] == LLM_COST + TOOL_COST == 305_000
    assert usage["total"]["cached_input_tokens"] == 200_000
    breakdown = await get(client, key, "/api/v2/usage/breakdown", group_by="agent,line_item,item")
    rows = {
        (r["group"]["agent"], r["group"]["line_item"], r["group"]["item"]): (
            r["tokens"],
            r["tool_calls"],
            r["billable_tool_calls"],
            r["cost_micros"],
        )
        for r in breakdown["rows"]
    }
    assert rows == {
        ("support-bot", "llm", "gpt-4o-mini"): (TOKENS, 0, 0, LLM_COST),
        ("support-bot", "tool_calls", "web_search"): (0, 1, 1, TOOL_COST),
        ("support-bot", "tool_calls", "github"): (0, 1, 0, 0),
    }
    assert breakdown["total"]["cost_micros"] == 305_000
    # The provider of each model call is kept with the event.
    rows = await stack.store.query(
        "SELECT type, provider, count() FROM events WHERE org_id = {o:String}"
        " GROUP BY type, provider ORDER BY type",
        {"o": org},
    )
    assert [tuple(r) for r in rows] == [("llm.usage", "openai", 2), ("tool.call", "", 2)]


async def one_more_token(base_url: str, key: str) -> None:
    """A new span with one token: once it is counted, everything before it on the org's
    partition is too (a re-export that had been counted again would show here)."""
    finished = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-app"}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    provider.get_tracer("t").start_span(
        "chat",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 1,
        },
    ).end()
    provider.shutdown()
    assert await sdk_export(base_url, key, list(finished.get_finished_spans())) == (
        SpanExportResult.SUCCESS
    )


async def test_an_sdk_export_is_metered_exactly_and_a_re_export_changes_nothing(
    client, stack, new_org: OrgFactory, base_url
):
    org, key = await new_org("free")
    spans = agent_run(f"conv-{uuid.uuid4().hex[:8]}")
    assert await sdk_export(base_url, key, spans) == SpanExportResult.SUCCESS
    await assert_metered(client, stack, org, key, run_id(spans))

    # The exporter retries, a Collector replays: the same spans again, in both encodings.
    assert await sdk_export(base_url, key, spans) == SpanExportResult.SUCCESS
    r = await post(base_url, otlp_json(spans), JSON)  # without a key: refused
    assert r.status_code == 401
    r = await post(base_url, otlp_json(spans), {**JSON, **bearer(key)})
    assert r.status_code == 200 and r.json() == {}, r.text
    await one_more_token(base_url, key)
    await tokens_reach(client, key, TOKENS + 1)
    await rows_reach(stack, org, 5)
    await assert_metered_again(client, key, run_id(spans))


async def assert_metered_again(client: httpx.AsyncClient, key: str, run: str) -> None:
    usage = await get(client, key, f"/api/v2/runs/{run}/usage")
    assert usage["total"]["cost_micros"] == 305_000 and usage["total"]["events"] == 4
    assert await tool_calls_used(client, key) == 1


async def test_the_same_run_in_otlp_json_gzipped_is_metered_the_same(
    client, stack, new_org: OrgFactory, base_url
):
    org, key = await new_org("free")
    spans = agent_run(f"conv-{uuid.uuid4().hex[:8]}")
    body = otlp_json(spans)
    r = await post(
        base_url, gzip.compress(body), {**JSON, "Content-Encoding": "gzip", **bearer(key)}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}  # no partialSuccess: nothing was refused
    # A 200 means stored: the rows are there at once, and the quota follows.
    assert await stored_rows(stack, org) == 4
    await assert_metered(client, stack, org, key, run_id(spans))
    r = await post(base_url, body, {**JSON, **bearer(key)})
    assert r.status_code == 200
    await one_more_token(base_url, key)
    await tokens_reach(client, key, TOKENS + 1)
    await assert_metered_again(client, key, run_id(spans))


async def test_an_export_not_stored_in_time_gets_503_and_the_exporters_retry_counts_once(
    client, stack, new_org: OrgFactory, base_url, monkeypatch
):
    org, key = await new_org("free")
    spans = agent_run(f"conv-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(stack.services.settings, "ingest_wait_s", 1.0)
    failpoints.enable("store.insert", "error")  # the store refuses every insert for now
    try:
        r = await post(base_url, otlp_json(spans), {**JSON, **bearer(key)})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert (r.json()["code"], r.json()["error"]["code"]) == (14, "not_stored_yet")
        # The SDK's exporter retries a 503 with the same spans until one is stored.
        exporting = asyncio.create_task(sdk_export(base_url, key, spans))
        await asyncio.sleep(3)
        assert not exporting.done()
    finally:
        failpoints.disable("store.insert")
    assert await exporting == SpanExportResult.SUCCESS
    # Both the refused request's events and the retries' reached the log: counted once.
    await assert_metered(client, stack, org, key, run_id(spans))


async def test_refused_spans_are_counted_in_partial_success_and_the_rest_is_stored(
    client, stack, new_org: OrgFactory, base_url
):
    org, key = await new_org("free")
    old = datetime.now(UTC) - timedelta(days=60)  # beyond TALLY_MAX_EVENT_AGE_DAYS (35)
    spans = agent_run("conv-old", end=old)  # its 2 chats and 2 tool calls end 60 days ago
    fresh = agent_run("conv-new")
    body = json.loads(otlp_json(spans))
    body["resourceSpans"] += json.loads(otlp_json(fresh))["resourceSpans"]
    r = await post(base_url, json.dumps(body).encode(), {**JSON, **bearer(key)})
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 4
    reasons = partial["errorMessage"].split(" | ")
    assert len(reasons) == 4
    for reason in reasons:
        assert reason.startswith(f"span otel-{run_id(spans)}-")
        assert "is more than 35 days in the past (TALLY_MAX_EVENT_AGE_DAYS)" in reason
    await assert_metered(client, stack, org, key, run_id(fresh))

    # The same answer in protobuf.
    r = await post(base_url, encode_spans(spans).SerializeToString(), {**PROTOBUF, **bearer(key)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 4


async def test_malformed_and_unauthenticated_exports_get_their_documented_answers(
    new_org: OrgFactory, base_url
):
    _, key = await new_org("free")
    spans = agent_run("conv-x")
    good_json = otlp_json(spans)
    auth = bearer(key)

    def status(r: httpx.Response) -> status_pb2.Status:
        assert r.headers["content-type"] == "application/x-protobuf"
        return status_pb2.Status.FromString(r.content)

    # Protobuf: a google.rpc.Status in protobuf.
    r = await post(base_url, b"\xff\xff\xff not protobuf", {**PROTOBUF, **auth})
    assert r.status_code == 400
    assert status(r).code == 3
    assert status(r).message.startswith("the body is not an OTLP protobuf export request")
    r = await post(base_url, encode_spans(spans).SerializeToString(), PROTOBUF)
    assert (r.status_code, status(r).code) == (401, 16)
    assert status(r).message == "send your API key as `Authorization: Bearer <key>`"
    r = await post(base_url, b"", {**PROTOBUF, "Authorization": "Bearer tk_wrong"})
    assert (r.status_code, status(r).message) == (401, "unknown or revoked API key")
    # The SDK's exporter reports the refusal (and does not retry a 401).
    assert await sdk_export(base_url, "tk_wrong", spans) == SpanExportResult.FAILURE

    # JSON: the Status fields, and Tally's error beside them.
    bad_id = good_json.replace(f'"{run_id(spans)}"'.encode(), b'"not-hex"', 1)
    for body, message in [
        (b"{not json", "the body is not an OTLP/JSON export request"),
        (b'{"resourceSpans": 5}', "the body is not an OTLP/JSON export request"),
        (bad_id, "the body is not an OTLP/JSON export request: traceId must be 32 hex digits"),
    ]:
        r = await post(base_url, body, {**JSON, **auth})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == 3 and r.json()["error"]["code"] == "invalid_otlp"
        assert (
            r.json()["message"].startswith(message)
            and r.json()["error"]["message"] == (r.json()["message"])
        )
    r = await post(base_url, b"\x1f\x8b not gzip", {**JSON, "Content-Encoding": "gzip", **auth})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_otlp"
    r = await post(base_url, good_json, {"Content-Type": "text/plain", **auth})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = await post(base_url, good_json, JSON)
    assert r.status_code == 401 and r.json() == {
        "code": 16,
        "message": "send your API key as `Authorization: Bearer <key>`",
        "error": {
            "code": "unauthorized",
            "message": "send your API key as `Authorization: Bearer <key>`",
        },
    }
