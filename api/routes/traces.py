"""OTLP/HTTP trace ingestion: `POST /v1/traces` turns GenAI spans into usage events.

An app instrumented with the OpenTelemetry SDK (or a Collector) exports its spans here with
an org key as `Authorization: Bearer <key>`. The spans are mapped by the GenAI semantic
conventions (tally.domain.otel, docs/otel.md); the events they give take the path of
`POST /api/v2/events` (api.ingest): the answer is 200 only once every accepted span is
stored, else 503 with `Retry-After`, which OTLP exporters retry. Spans the contract or the
event-time policy refuses are counted in `partial_success.rejected_spans` with the reason;
spans without usage are ignored (`tally_otlp_spans{outcome="ignored"}`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from api import otlp
from api.auth import require_scope, services
from api.errors import ApiError
from api.ingest import admit, read_body, store
from api.registry import ApiKey
from api.state import Services
from schemas.events import Event, InvalidEvent
from schemas.otlp import OtlpError, TraceExportResponse
from tally import metrics
from tally.domain.otel import map_spans

MAX_BODY_BYTES = 4 * 1024 * 1024  # as sent (gzip or not)
MAX_DECOMPRESSED_BYTES = 32 * 1024 * 1024
REASONS_SHOWN = 5


class OtlpRoute(APIRoute):
    """Errors raised on this route, its dependencies' included (the key check), are answered
    as OTLP/HTTP says: a `google.rpc.Status` in the request's encoding."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return otlp.failure(otlp.answer_type(request), exc)

        return run


router = APIRouter(tags=["opentelemetry"], route_class=OtlpRoute)


def _error(description: str, *examples: tuple[str, int, str]) -> dict[str, Any]:
    return {
        "model": OtlpError,
        "description": description,
        "content": {
            "application/json": {
                "examples": {
                    code: {
                        "value": {
                            "code": grpc,
                            "message": message,
                            "error": {"code": code, "message": message},
                        }
                    }
                    for code, grpc, message in examples
                }
            },
            otlp.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        },
    }


_ANY_OBJECTS = {"type": "array", "items": {"type": "object"}}
_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An `ExportTraceServiceRequest` (opentelemetry-proto), in binary"
        " protobuf or in OTLP/JSON (hex trace and span ids, lowerCamelCase keys), optionally"
        " with `Content-Encoding: gzip`. Unknown fields are ignored.",
        "content": {
            otlp.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            otlp.JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "resourceSpans": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "resource": {"type": "object"},
                                    "scopeSpans": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "scope": {"type": "object"},
                                                "spans": _ANY_OBJECTS,
                                                "schemaUrl": {"type": "string"},
                                            },
                                        },
                                    },
                                    "schemaUrl": {"type": "string"},
                                },
                            },
                        }
                    },
                }
            },
        },
    }
}


@router.post(
    "/v1/traces",
    response_model=TraceExportResponse,
    responses={
        200: {
            "description": "Every span not counted in `partialSuccess.rejectedSpans` is stored",
            "content": {otlp.PROTOBUF: {"schema": {"type": "string", "format": "binary"}}},
        },
        400: _error(
            "The body is not an OTLP export request",
            ("invalid_otlp", 3, "the body is not an OTLP/JSON export request: ..."),
        ),
        401: _error(
            "Missing, unknown or revoked key",
            ("unauthorized", 16, "send your API key as `Authorization: Bearer <key>`"),
        ),
        403: _error(
            "The key lacks the `events:write` scope",
            ("forbidden", 7, "this key lacks the 'events:write' scope (it has: ...)"),
        ),
        413: _error(
            "The body is too large",
            ("payload_too_large", 8, f"the body is over {MAX_BODY_BYTES} bytes; ..."),
        ),
        415: _error(
            "Not protobuf or JSON, or an encoding other than gzip",
            ("unsupported_media_type", 3, "Content-Type 'text/plain': send ..."),
        ),
        503: {
            **_error(
                "Not confirmed as stored in time: send the same request again",
                ("not_stored_yet", 14, "the request was not confirmed as stored within 10s"),
            ),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    },
    openapi_extra=_DOC,
)
async def export_traces(
    request: Request,
    key: ApiKey = Depends(require_scope("events:write")),
    svc: Services = Depends(services),
) -> Response:
    """Meter the GenAI spans of an OTLP trace export (docs/otel.md)."""
    media = otlp.media_type(request)
    if media not in otlp.MEDIA_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {media or 'missing'!r}: send {otlp.PROTOBUF} or {otlp.JSON}",
        )
    body = otlp.decompress(
        await read_body(request, MAX_BODY_BYTES),
        request.headers.get("content-encoding", ""),
        MAX_DECOMPRESSED_BYTES,
    )
    spans = otlp.spans(otlp.parse(body, media))
    events: list[Event] = []
    reasons: list[str] = []
    ignored = 0
    for outcome in map_spans(spans, key.org_id, key.mode):
        if outcome.kind == "ignored":
            ignored += 1
            continue
        if outcome.event is None:
            reasons.append(outcome.reason or "refused")
            continue
        try:
            events.append(admit(svc, outcome.event))
        except InvalidEvent as exc:
            reasons.append(f"span {outcome.event['event_id']}: {exc.reason}")
    metrics.otlp_spans.labels("event").inc(len(events))
    metrics.otlp_spans.labels("ignored").inc(ignored)
    metrics.otlp_spans.labels("rejected").inc(len(reasons))
    not_spooled = await store(svc, events)
    if not_spooled is not None:
        raise ApiError(503, "unavailable", f"the spans could not be queued: {not_spooled}")
    message = " | ".join(reasons[:REASONS_SHOWN])
    if len(reasons) > REASONS_SHOWN:
        message += f" | and {len(reasons) - REASONS_SHOWN} more"
    return otlp.success(media, len(reasons), message)
