"""OTLP/HTTP for traces: request bodies in, responses out, with the official messages.

Both encodings of the OpenTelemetry Protocol are read with the generated `opentelemetry-proto`
messages: binary protobuf (`application/x-protobuf`) and JSON (`application/json`, the proto3
JSON mapping with OTLP's two exceptions: trace and span ids are hex strings, and enums are
integers). A gzip `Content-Encoding` is accepted. Answers use the request's encoding: an
`ExportTraceServiceResponse` (with `partial_success` when spans were refused) or, for an
error, a `google.rpc.Status`; as JSON the error also carries Tally's `{"error": {code,
message}}`, so one reader fits both.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson
from fastapi import Request, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from api.errors import ApiError
from tally.domain.otel import AttrValue, Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MEDIA_TYPES = (PROTOBUF, JSON)

# The gRPC status code a `google.rpc.Status` carries for each HTTP status Tally answers.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}
_ID_FIELDS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8}
_PARENT_FIELDS = ("parentSpanId", "parent_span_id")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def answer_type(request: Request) -> str:
    """The encoding answers are given in: the request's, JSON when it is neither."""
    return PROTOBUF if media_type(request) == PROTOBUF else JSON


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent, before its `Content-Encoding` (identity or gzip), at most `limit`."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r}: send gzip or none"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "invalid_otlp", f"the body is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise ApiError(
            413, "payload_too_large", f"the body is over {limit} bytes once decompressed"
        )
    if not inflater.eof:
        raise ApiError(400, "invalid_otlp", "the gzip body is truncated")
    return out


def parse(body: bytes, media: str) -> ExportTraceServiceRequest:
    """An `ExportTraceServiceRequest` from a body of either encoding; 400 when it is not one."""
    message = ExportTraceServiceRequest()
    if media == PROTOBUF:
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise ApiError(
                400, "invalid_otlp", f"the body is not an OTLP protobuf export request: {exc}"
            ) from None
        return message
    try:
        document = orjson.loads(body)
        if not isinstance(document, dict):
            raise ValueError("the body must be a JSON object")
        _hex_ids_to_base64(document)
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (ValueError, TypeError, RecursionError, json_format.ParseError) as exc:
        raise ApiError(
            400, "invalid_otlp", f"the body is not an OTLP/JSON export request: {exc}"
        ) from None
    return message


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids as hex; the proto3 JSON mapping reads bytes as
    base64. Rewrites the ids of spans and of their links in place; a field of the wrong
    type is left for the parser to refuse."""
    for resource in _list(document, "resourceSpans", "resource_spans"):
        for scope in _list(resource, "scopeSpans", "scope_spans"):
            for span in _list(scope, "spans"):
                _rewrite_ids(span, parent=True)
                for link in _list(span, "links"):
                    _rewrite_ids(link, parent=False)


def _list(obj: Any, *names: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    for name in names:
        value = obj.get(name)
        if isinstance(value, list):
            return value
    return []


def _rewrite_ids(obj: Any, parent: bool) -> None:
    if not isinstance(obj, dict):
        return
    fields = dict(_ID_FIELDS)
    if parent:
        fields.update({name: 8 for name in _PARENT_FIELDS})
    for name, size in fields.items():
        value = obj.get(name)
        if not isinstance(value, str):
            continue
        if name in _PARENT_FIELDS and value == "":
            continue  # a root span
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) != size or len(value) != 2 * size:
            raise ValueError(f"{name} must be {2 * size} hex digits, not {value[:40]!r}")
        obj[name] = base64.b64encode(raw).decode()


def spans(request: ExportTraceServiceRequest) -> list[Span]:
    """The spans of an export as the mapping reads them (tally.domain.otel)."""
    out = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    Span(
                        trace_id=span.trace_id,
                        span_id=span.span_id,
                        parent_span_id=span.parent_span_id,
                        end_ns=span.end_time_unix_nano,
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                    )
                )
    return out


def _attributes(pairs: Any) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        if kind in ("string_value", "bool_value", "int_value", "double_value"):
            out[pair.key] = getattr(pair.value, kind)
        else:
            out[pair.key] = None  # arrays, maps and bytes carry nothing the mapping reads
    return out


def success(media: str, rejected: int, message: str) -> Response:
    """200 with an `ExportTraceServiceResponse`; `partial_success` when spans were refused."""
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )
    if media == PROTOBUF:
        return Response(answer.SerializeToString(), media_type=PROTOBUF)
    return Response(orjson.dumps(json_format.MessageToDict(answer)), media_type=JSON)


def failure(media: str, error: ApiError) -> Response:
    """An error as OTLP/HTTP answers one: a `google.rpc.Status` in the request's encoding
    (as JSON, with Tally's own `error` object beside its fields)."""
    code = _GRPC_CODES.get(error.status, 2)
    if media == PROTOBUF:
        body = status_pb2.Status(code=code, message=error.message).SerializeToString()
    else:
        body = orjson.dumps(
            {
                "code": code,
                "message": error.message,
                "error": {"code": error.code, "message": error.message},
            }
        )
    return Response(body, status_code=error.status, media_type=media, headers=error.headers)
