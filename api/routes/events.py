"""HTTP ingestion for runtimes that cannot reach Kafka: `POST /api/v2/events`.

The body is a JSON array of up to `MAX_EVENTS` events in the wire format (docs/events.md),
at most `MAX_BODY_BYTES`. The org key decides the org and the mode: an event may leave out
`org_id` and `key_mode` (they are taken from the key), but one that names another org, or
the other mode, is rejected. Each event is validated on its own: good events go through
even when others in the same batch are refused, and the answer lists every event's fate.
Accepted events go to usage.events through the API process's emitter, and the answer waits
until the worker has *stored* them (end-to-end acknowledgement, `Emitter.emit_stored`): a 2xx
means every accepted event is counted, so a client never needs to send it again. If that is
not confirmed within `TALLY_INGEST_WAIT_S` (10 s; a worker restarting, say), the answer is
503 `not_stored_yet` with `Retry-After`: send the same batch again, and what was stored
meanwhile is recognised by event_id. Status: 200 when every event was accepted, 207 when
some were not.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.auth import require_scope, services
from api.errors import ApiError
from api.ingest import admit, read_body, store
from api.registry import ApiKey
from api.state import Services
from schemas.api import ErrorBody, EventResult, IngestResponse
from schemas.events import Event, InvalidEvent

MAX_EVENTS = 1000
MAX_BODY_BYTES = 4 * 1024 * 1024

router = APIRouter(
    prefix="/api/v2",
    tags=["events"],
    responses={401: {"model": ErrorBody, "description": "Missing or unknown key"}},
)

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "maxItems": MAX_EVENTS,
                    # Any JSON value: each item is judged on its own, like every other
                    # malformed event, so one that is not an object is rejected in `results`
                    # (207) and the rest of the batch goes through.
                    "items": {
                        "description": "An event: an object in the wire format"
                        " (docs/events.md). An item that is not one (not an object, or an"
                        " object the contract refuses) is rejected on its own in `results`,"
                        " with the reason; the other items are still accepted."
                    },
                }
            }
        },
    }
}


@router.post(
    "/events",
    response_model=IngestResponse,
    responses={
        207: {"model": IngestResponse, "description": "Some events were not accepted"},
        400: {"model": ErrorBody},
        413: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
    openapi_extra=_BODY_DOC,
)
async def ingest(
    request: Request,
    key: ApiKey = Depends(require_scope("events:write")),
    svc: Services = Depends(services),
) -> JSONResponse:
    """Accept a batch of usage events for the key's org; answers per event."""
    if svc.emitter is None:
        raise ApiError(503, "unavailable", "event ingestion is not enabled in this process")
    items = _parse(await read_body(request, MAX_BODY_BYTES))
    checked = [_admit(svc, key, i, item) for i, item in enumerate(items)]
    results = [result for result, _ in checked]
    failure = await store(svc, [event for _, event in checked if event is not None])
    if failure is not None:
        results = [_failed(r, failure) for r in results]
    body = IngestResponse(
        accepted=sum(r.status == "accepted" for r in results),
        rejected=sum(r.status == "rejected" for r in results),
        failed=sum(r.status == "failed" for r in results),
        stored=True,
        results=results,
    )
    status = 200 if body.accepted == len(results) else 207
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status)


def _parse(body: bytes) -> list[Any]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # orjson refuses integers beyond 64 bits; let the contract refuse that event
            items = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ApiError(400, "invalid_request", "the body must be a JSON array of events")
    if len(items) > MAX_EVENTS:
        raise ApiError(
            413,
            "too_many_events",
            f"{len(items)} events in one request; the limit is {MAX_EVENTS}: split the batch",
        )
    return items


def _admit(svc: Services, key: ApiKey, index: int, item: Any) -> tuple[EventResult, Event | None]:
    """Validate one event against the contract, the key and the event-time policy
    (api.ingest.admit); the event, if good."""
    if not isinstance(item, dict):
        return EventResult(
            index=index, status="rejected", error="event: must be a JSON object"
        ), None
    item = {"org_id": key.org_id, "key_mode": key.mode, **item}
    event_id = item.get("event_id") if isinstance(item.get("event_id"), str) else None
    try:
        if isinstance(item["org_id"], str) and item["org_id"] != key.org_id:
            raise InvalidEvent(
                f"org_id: this key belongs to org {key.org_id!r}; it cannot send events "
                "for another org"
            )
        if item["key_mode"] in ("live", "test") and item["key_mode"] != key.mode:
            raise InvalidEvent(
                f"key_mode: this is a {key.mode} key, so its events must say "
                f'key_mode "{key.mode}" (or leave key_mode out)'
            )
        event = admit(svc, item)
    except InvalidEvent as exc:
        return EventResult(
            index=index, status="rejected", event_id=event_id, error=exc.reason
        ), None
    return EventResult(index=index, status="accepted", event_id=event.event_id), event


def _failed(result: EventResult, why: str) -> EventResult:
    if result.status != "accepted":
        return result
    return EventResult(index=result.index, status="failed", event_id=result.event_id, error=why)
