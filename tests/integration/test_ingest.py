"""HTTP ingestion: POST /api/v2/events takes a batch, answers per event, counts the good ones."""

from __future__ import annotations

import httpx
import orjson
import pytest

from api.routes.events import MAX_BODY_BYTES, MAX_EVENTS
from schemas.events import EVENT_TYPES
from tests.conftest import ADMIN_KEY, OrgFactory, bearer
from tests.factories import make_event
from tests.integration.test_emitter import tokens_reach


async def post(client: httpx.AsyncClient, key: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return await client.post("/api/v2/events", content=body, headers=bearer(key))
    return await client.post("/api/v2/events", json=body, headers=bearer(key))


async def test_good_events_go_through_and_bad_ones_are_refused_one_by_one(
    client, new_org: OrgFactory
):
    org, key = await new_org()
    other, _ = await new_org()
    batch = [
        make_event(org_id=org, input_tokens=100, output_tokens=20),
        make_event(org_id=org, input_tokens=-1),
        make_event(org_id=other, input_tokens=10**6),
        make_event(org_id=org, key_mode="test"),
        "not an event",
        make_event("tool.call", org_id=org, success="maybe"),
        {k: v for k, v in make_event(input_tokens=5, output_tokens=0).items() if k != "org_id"},
        make_event("storage.usage", org_id=org, schema_version=9),
        make_event("session.started", org_id=org, key_mode=...),
        make_event("admission.requested", org_id=org, limit=10**6),  # only the API writes them
    ]
    r = await post(client, key, batch)
    assert r.status_code == 207, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (3, 7, 0)
    results = body["results"]
    assert [x["index"] for x in results] == list(range(len(batch)))
    assert [x["status"] for x in results] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert results[0]["event_id"] == batch[0]["event_id"]
    assert results[1]["error"] == "input_tokens: must be greater than or equal to 0"
    assert results[2]["error"] == (
        f"org_id: this key belongs to org {org!r}; it cannot send events for another org"
    )
    assert results[3]["error"] == (
        'key_mode: this is a live key, so its events must say key_mode "live" '
        "(or leave key_mode out)"
    )
    assert results[4] == {"index": 4, "status": "rejected", "error": "event: must be a JSON object"}
    assert results[5]["error"] == "success: must be a valid boolean"
    assert results[7]["error"].startswith("schema_version: 9 is newer than this Tally understands")
    assert results[9]["error"].startswith("type: admission.requested is written by Tally")
    # Only the accepted events count: 120 + 5 tokens.
    await tokens_reach(client, key, 125)


async def test_a_test_key_sends_test_events_which_are_free(client, new_org: OrgFactory):
    org, live_key = await new_org()
    r = await client.post(
        f"/api/v2/admin/orgs/{org}/keys",
        json={"mode": "test"},
        headers=bearer(ADMIN_KEY),
    )
    test_key = r.json()["key"]
    r = await post(
        client,
        test_key,
        [make_event(org_id=org, key_mode="test", input_tokens=999), make_event(org_id=org)],
    )
    assert r.status_code == 207
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"]
    assert r.json()["results"][1]["error"].startswith("key_mode: this is a test key")
    r = await post(client, live_key, [make_event(org_id=org, input_tokens=4, output_tokens=0)])
    assert r.status_code == 200 and r.json()["accepted"] == 1
    await tokens_reach(client, live_key, 4)  # the test event is recorded, never counted


async def test_a_resent_batch_is_counted_once(client, new_org: OrgFactory):
    org, key = await new_org()
    batch = [make_event(org_id=org, input_tokens=10, output_tokens=1) for _ in range(20)]
    for _ in range(3):  # the client did not see the answer and retries, same event_ids
        r = await post(client, key, batch)
        assert r.status_code == 200 and r.json()["accepted"] == 20
    await post(client, key, [make_event(org_id=org, input_tokens=1, output_tokens=0)])
    await tokens_reach(client, key, 221)


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{not json", 400, "invalid_json", "the body is not valid JSON"),
        (b'{"type": "llm.usage"}', 400, "invalid_request", "the body must be a JSON array"),
        (b"[]", 200, None, None),
    ],
)
async def test_malformed_bodies_get_a_clear_error(
    client, new_org: OrgFactory, body, status, code, message
):
    _, key = await new_org()
    r = await post(client, key, body)
    assert r.status_code == status, r.text
    if code:
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["message"].startswith(message)
    else:
        assert r.json() == {
            "accepted": 0,
            "rejected": 0,
            "failed": 0,
            "stored": True,
            "results": [],
        }


async def test_odd_items_are_rejected_one_by_one_and_never_break_the_endpoint(
    client, new_org: OrgFactory
):
    org, key = await new_org()
    body = (
        b'[null, 1, [], "x", {"type": {"x": 1}}, {"event_id": []}, '
        b'{"event_id": "e", "type": "llm.usage", "agent_id": "a", "ts": "2026-11-23T10:00:00Z",'
        b' "model": "m", "input_tokens": 100000000000000000000000, "output_tokens": NaN},'
        + orjson.dumps(make_event(org_id=org, input_tokens=2, output_tokens=0))
        + b"]"
    )
    r = await post(client, key, body)
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["rejected"] * 7 + ["accepted"]
    assert results[6]["error"] == (
        "input_tokens: must be less than or equal to 1000000000000; "
        "output_tokens: must be a valid integer"
    )
    assert results[4]["error"] == f"type: must be one of {', '.join(EVENT_TYPES)}"
    await tokens_reach(client, key, 2)


async def test_batches_over_the_limits_are_refused(client, new_org: OrgFactory):
    org, key = await new_org()
    r = await post(client, key, [make_event(org_id=org)] * (MAX_EVENTS + 1))
    assert r.status_code == 413
    assert r.json()["error"] == {
        "code": "too_many_events",
        "message": f"{MAX_EVENTS + 1} events in one request; the limit is {MAX_EVENTS}: "
        "split the batch",
    }
    r = await post(client, key, b"[" + b" " * MAX_BODY_BYTES + b"]")
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    huge = make_event(org_id=org, notes="x" * 20_000)
    r = await post(client, key, [huge])
    assert r.json()["results"][0]["error"] == "event: must be at most 16384 bytes of JSON"


async def test_ingestion_needs_an_org_key(client):
    r = await client.post("/api/v2/events", json=[make_event()])
    assert r.status_code == 401
    r = await client.post("/api/v2/events", json=[make_event()], headers=bearer("tk_live_x"))
    assert r.status_code == 401
