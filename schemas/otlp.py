"""The JSON answers of `POST /v1/traces` (OTLP/HTTP), as the OpenAPI document states them.

The messages themselves are `opentelemetry-proto`'s; these models only describe their JSON
form for the document. Protobuf requests get the same messages in binary.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.api import ErrorDetail


class TracePartialSuccess(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    rejected_spans: int | str = Field(
        0,
        alias="rejectedSpans",
        description="Spans refused (an int64: a JSON string or number). Accepted spans are"
        " stored; refused ones are never counted and sending them again does not help.",
    )
    error_message: str = Field(
        "", alias="errorMessage", description="Why, for the first few refused spans."
    )


class TraceExportResponse(BaseModel):
    """`ExportTraceServiceResponse`: every span that was not refused is stored."""

    model_config = ConfigDict(populate_by_name=True)

    partial_success: TracePartialSuccess | None = Field(
        None, alias="partialSuccess", description="Present only when spans were refused."
    )


class OtlpError(BaseModel):
    """A `google.rpc.Status` (`code` is the gRPC status code) with Tally's error beside it."""

    code: int = Field(examples=[3])
    message: str
    error: ErrorDetail
