"""The key contract: an org's events are counted on the partition its org_id maps to.

A producer that keys by something else (or not at all, or uses another partitioner) puts an
org's events on partitions whose worker keeps none of its state. The worker forwards each
such event to its org's partition, where it is counted once with the rest of the org; one
that keeps arriving in the wrong place goes to the DLQ, and `tally dlq replay` re-sends it
keyed by org_id. Runs on the session stack (embedded broker, chDB, one worker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from streams.batch import HOPS, MAX_HOPS
from tally.config import EVENTS_TOPIC
from tally.domain.partitioning import partition_of
from tests.conftest import OrgFactory, bearer, eventually, rows_reach
from tests.factories import make_event, wire
from tests.integration.ops import serve, tally


@pytest_asyncio.fixture(scope="module")
async def api_url(stack) -> AsyncIterator[str]:
    async with serve(stack) as url:
        yield url


async def used(client, key: str) -> int:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 200, r.text
    return int(r.json()["used"])


async def stored_partitions(stack, org: str) -> list[tuple[str, int]]:
    return await stack.store.query(
        "SELECT event_id, partition FROM events WHERE org_id = {o:String} ORDER BY event_id",
        {"o": org},
    )


async def test_events_sent_to_another_partition_are_counted_once_on_their_orgs(
    stack, client, new_org: OrgFactory, producer: AIOKafkaProducer
):
    org, key = await new_org()
    n = stack.worker.partitions
    assert n == stack.settings.partitions
    home = partition_of(org, n)
    wrong = [(home + 1) % n, (home + 3) % n]
    keyed_otherwise = make_event(org_id=org, input_tokens=1_000, output_tokens=0)
    unkeyed = make_event(org_id=org, input_tokens=20, output_tokens=0)
    forwarded = stack.worker.forwarded
    await producer.send(EVENTS_TOPIC, wire(keyed_otherwise), key=b"agent-7", partition=wrong[0])
    await producer.send(EVENTS_TOPIC, wire(unkeyed), key=None, partition=wrong[1])
    # The producer retries the first one, keyed by org_id this time.
    await producer.send(EVENTS_TOPIC, wire(keyed_otherwise), key=org.encode())
    await producer.flush()

    async def counted() -> bool:
        return await used(client, key) == 1_020

    await eventually(counted, timeout=20)
    ids = sorted([keyed_otherwise["event_id"], unkeyed["event_id"]])

    async def stored_at_home() -> bool:  # the quota may show them before they are stored
        return await stored_partitions(stack, org) == [(i, home) for i in ids]

    await eventually(stored_at_home, timeout=20)
    assert stack.worker.forwarded - forwarded == 2
    assert await used(client, key) == 1_020


async def test_an_event_that_keeps_arriving_elsewhere_is_dead_lettered_and_replayed_once(
    stack, api_url: str, client, new_org: OrgFactory, producer: AIOKafkaProducer
):
    org, key = await new_org()
    n = stack.worker.partitions
    home = partition_of(org, n)
    e = make_event(org_id=org, input_tokens=55, output_tokens=0)
    # Already forwarded as often as workers that agree on the count ever would.
    hops = [(HOPS, str(MAX_HOPS).encode())]
    await producer.send(EVENTS_TOPIC, wire(e), partition=(home + 1) % n, headers=hops)
    await producer.flush()
    args = ["--bootstrap-servers", stack.settings.bootstrap_servers, "--api-url", api_url]

    async def listed():
        run = await tally("dlq", "list", "--json", *args[:2])
        mine = [orjson.loads(x) for x in run.out.splitlines() if e["event_id"] in x]
        return mine or None

    (letter,) = await eventually(listed, timeout=20, interval=0.5)
    assert letter["error"].startswith(
        f"misrouted: org_id {org!r} belongs to partition {home} of {n}, not {(home + 1) % n}"
    )
    assert await used(client, key) == 0

    run = await tally("dlq", "replay", "--offset", str(letter["dlq_offset"]), *args)
    assert run.code == 0, run.err
    assert "replayed 1;" in run.out
    await eventually(lambda: _used_is(client, key, 55))
    await rows_reach(stack, org, 1)  # the quota may show it before it is stored
    again = await tally("dlq", "replay", "--offset", str(letter["dlq_offset"]), *args)
    assert again.code == 0 and "skipped 1 already stored" in again.out, again.out
    assert await stored_partitions(stack, org) == [(e["event_id"], home)]
    assert await used(client, key) == 55


async def _used_is(client, key: str, want: int) -> bool:
    return await used(client, key) == want
