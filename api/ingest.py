"""What every HTTP ingestion route shares: the checks an event passes before it is sent,
and the send that answers only once Tally has stored what it accepted.

`POST /api/v2/events` and `POST /v1/traces` both end here, so both give the same guarantee:
a 2xx means every accepted event is stored (end-to-end acknowledgement,
`Emitter.emit_stored`); otherwise the answer is 503 `not_stored_yet` with `Retry-After`, and
the client sends the same request again (what was stored meanwhile is recognised by
`event_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request

from api.errors import ApiError
from api.state import Services
from producers.emitter import MAX_EVENT_BYTES
from producers.spool import SpoolError
from schemas.events import Event, InvalidEvent, validate_event
from tally import metrics


def admit(svc: Services, item: dict[str, Any]) -> Event:
    """The event `item` describes, if the contract and the event-time policy
    (tally.domain.eventtime) accept it; raises InvalidEvent with the reason otherwise."""
    event = validate_event(item)
    if event.type == "admission.requested":  # the API's own, made by POST /api/v2/quota/check
        raise InvalidEvent(
            "type: admission.requested is written by Tally's admission checks; ask"
            " POST /api/v2/quota/check with reserve instead"
        )
    if len(orjson.dumps(item, default=str)) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event: must be at most {MAX_EVENT_BYTES} bytes of JSON")
    too_old_or_ahead = svc.settings.event_time.refusal(event.ts, datetime.now(UTC))
    if too_old_or_ahead is not None:  # history goes through `tally backfill --from --to`
        raise InvalidEvent(too_old_or_ahead)
    return event


async def store(svc: Services, events: Sequence[Event]) -> str | None:
    """Send `events` and return once Tally has stored them all (None), or with the reason
    they could be neither sent nor spooled (a full disk). Raises 503 `not_stored_yet` when
    storage is not confirmed within `TALLY_INGEST_WAIT_S`: the events are still delivered,
    and the client's retry is counted once."""
    if svc.emitter is None:
        raise ApiError(503, "unavailable", "event ingestion is not enabled in this process")
    if not events:
        return None
    wait_s = svc.settings.ingest_wait_s
    try:
        stored = await svc.emitter.emit_stored(events, timeout=wait_s)
    except SpoolError as exc:
        return str(exc)
    if not stored:
        metrics.ingest_unconfirmed.inc()
        raise ApiError(
            503,
            "not_stored_yet",
            f"the request was not confirmed as stored within {wait_s:g}s (the worker is"
            " catching up or restarting); send the same request again: events already"
            " stored are recognised by event_id and counted once",
            headers={"Retry-After": "1"},
        )
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 `payload_too_large` past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the body is over {limit} bytes; send smaller batches"
    )
