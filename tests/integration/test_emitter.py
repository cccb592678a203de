"""The emitter against the real embedded broker and the session's Tally: delivered, exact."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from producers.emitter import Emitter
from producers.spool import Spool, SpoolFull
from producers.sync import SyncEmitter
from schemas.events import InvalidEvent
from tally.broker import EmbeddedBroker, free_port
from tally.config import EVENTS_TOPIC
from tally.topics import ensure_topics
from tests.conftest import OrgFactory, bearer, eventually


async def used_tokens(client: httpx.AsyncClient, key: str) -> int:
    r = await client.get("/api/v2/quota/tokens", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["used"]


async def tokens_reach(client: httpx.AsyncClient, key: str, expected: int, timeout: float = 30):
    async def check() -> int | None:
        used = await used_tokens(client, key)
        assert used <= expected, f"counted {used}, more than the {expected} sent"
        return used if used == expected else None

    return await eventually(check, timeout=timeout)


@pytest.mark.slow
async def test_ten_thousand_events_are_delivered_and_counted_exactly(
    client, new_org: OrgFactory, stack, tmp_path
):
    org, key = await new_org()
    rng = random.Random(3)
    expected = 0
    async with Emitter(stack.settings.bootstrap_servers, spool_dir=tmp_path) as emitter:
        ids = set()
        for i in range(10_000):
            tokens_in, tokens_out = rng.randint(1, 5_000), rng.randint(0, 500)
            expected += tokens_in + tokens_out
            ids.add(
                emitter.llm_usage(
                    org_id=org,
                    agent_id=f"agent-{i % 7}",
                    run_id=f"run-{i // 10}",
                    model="gpt-4o",
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    cached_input_tokens=tokens_in // 3,
                )
            )
        await emitter.flush(timeout=60)
        stats = emitter.stats()
    assert len(ids) == 10_000
    assert (stats.sent, stats.spooled, stats.failed, stats.buffered) == (10_000, 0, 0, 0)
    await tokens_reach(client, key, expected)
    assert await _on_topic(stack.settings.bootstrap_servers, org) == 10_000


async def _on_topic(bootstrap: str, org: str) -> int:
    """How many messages keyed by `org` are on usage.events (read from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(EVENTS_TOPIC) or set()
        tps = [TopicPartition(EVENTS_TOPIC, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                return count
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            count += sum(m.key == org.encode() for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()


async def test_every_kind_goes_through_and_only_live_llm_tokens_count(
    client, new_org: OrgFactory, stack, tmp_path
):
    org, key = await new_org()
    dead_before = stack.worker.dead_letters
    async with Emitter(stack.settings.bootstrap_servers, spool_dir=tmp_path) as e:
        base = {"org_id": org, "agent_id": "a1", "run_id": "r1", "session_id": "s1"}
        e.session_started(org_id=org, agent_id="a1", session_id="s1")
        e.llm_usage(**base, model="gpt-4o", input_tokens=700, output_tokens=77)
        e.llm_usage(**base, model="gpt-4o", input_tokens=10**6, output_tokens=1, key_mode="test")
        e.tool_call(**base, connector="github", tool="create_issue", success=False)
        e.gateway_request(**base, model="gpt-4o-mini", cache_hit=True)
        e.storage_usage(**base, kind="traces", byte_seconds=10**9)
        e.session_ended(org_id=org, agent_id="a1", session_id="s1", ts=datetime.now(UTC))
        e.emit(
            {
                "event_id": "wire-1",
                "type": "llm.usage",
                "org_id": org,
                "agent_id": "a1",
                "key_mode": "live",
                "ts": datetime.now(UTC).isoformat(),
                "model": "gpt-4o",
                "input_tokens": 3,
                "output_tokens": 0,
            }
        )
    await tokens_reach(client, key, 780)
    assert stack.worker.dead_letters == dead_before


async def test_bad_arguments_are_refused_and_the_emitter_keeps_going(
    client, new_org: OrgFactory, stack, tmp_path
):
    org, key = await new_org()
    async with Emitter(stack.settings.bootstrap_servers, spool_dir=tmp_path) as e:
        bad_calls = [
            lambda: e.llm_usage(
                org_id=org, agent_id="a", model="m", input_tokens=-1, output_tokens=1
            ),
            lambda: e.llm_usage(
                org_id=None, agent_id="a", model="m", input_tokens=1, output_tokens=1
            ),  # type: ignore[arg-type]
            lambda: e.tool_call(org_id=org, agent_id="a", connector="c", tool="t", success="no"),  # type: ignore[arg-type]
            lambda: e.session_started(org_id=org, agent_id="a", session_id=["s"]),  # type: ignore[arg-type]
            lambda: e.storage_usage(org_id=org, agent_id="a", kind="disk", byte_seconds=1),
            lambda: e.emit({"type": "llm.usage"}),
            lambda: e.emit({"org_id": org, "nested": object()}),
            lambda: e.emit([1, 2]),  # type: ignore[arg-type]
        ]
        for call in bad_calls:
            with pytest.raises(InvalidEvent):
                call()
        e.llm_usage(org_id=org, agent_id="a", model="gpt-4o", input_tokens=5, output_tokens=6)
        await e.flush()
        stats = e.stats()
    assert stats.rejected == len(bad_calls)
    assert stats.sent == 1
    await tokens_reach(client, key, 11)


async def test_sync_emitter_from_many_plain_threads(client, new_org: OrgFactory, stack, tmp_path):
    org, key = await new_org()
    threads_n, per_thread = 8, 250

    def agent(tally: SyncEmitter, t: int, errors: list[BaseException]) -> None:
        try:
            for i in range(per_thread):
                tally.llm_usage(
                    org_id=org,
                    agent_id=f"agent-{t}",
                    model="gpt-4o",
                    input_tokens=t + 1,
                    output_tokens=i % 2,
                )
                tally.tool_call(
                    org_id=org, agent_id=f"agent-{t}", connector="slack", tool="post", success=True
                )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def runtime() -> tuple[object, list[BaseException]]:
        errors: list[BaseException] = []
        with SyncEmitter(stack.settings.bootstrap_servers, spool_dir=tmp_path) as tally:
            threads = [
                threading.Thread(target=agent, args=(tally, t, errors)) for t in range(threads_n)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            tally.flush(timeout=30)
            stats = tally.stats()
        return stats, errors

    stats, errors = await asyncio.to_thread(runtime)
    assert errors == []
    assert stats.sent == threads_n * per_thread * 2  # type: ignore[attr-defined]
    expected = sum((t + 1) * per_thread + per_thread // 2 for t in range(threads_n))
    await tokens_reach(client, key, expected)


async def _keys_and_ids(bootstrap: str, org: str) -> list[str]:
    """The event_ids keyed by `org` on usage.events, in log order (one partition per org)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(EVENTS_TOPIC, p) for p in consumer.partitions_for_topic(EVENTS_TOPIC)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        ids: list[str] = []
        while not all([await consumer.position(tp) >= ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for msgs in batch.values():
                ids += [orjson.loads(m.value)["event_id"] for m in msgs if m.key == org.encode()]
        return ids
    finally:
        await consumer.stop()


async def test_a_full_buffer_overflows_to_the_spool_and_order_is_kept(
    client, new_org: OrgFactory, stack, tmp_path
):
    org, key = await new_org()
    async with Emitter(
        stack.settings.bootstrap_servers, spool_dir=tmp_path, buffer_events=50, batch_events=40
    ) as e:
        emitted = []
        for burst in range(6):
            for _ in range(500):  # no await: the pump cannot keep up, the buffer overflows
                emitted.append(
                    e.llm_usage(
                        org_id=org, agent_id="a", model="gpt-4o", input_tokens=1, output_tokens=0
                    )
                )
            await asyncio.sleep(0.005 * burst)
        assert e.stats().spooled > 1_000
        assert await e.wait_delivered(30)
        stats = e.stats()
    assert stats.sent == 3_000 and stats.failed == 0
    assert await _keys_and_ids(stack.settings.bootstrap_servers, org) == emitted
    await tokens_reach(client, key, 3_000)


async def test_a_full_spool_refuses_new_events_and_says_so(tmp_path):
    down = f"127.0.0.1:{free_port()}"  # nothing listens: the broker is down
    async with Emitter(down, spool_dir=tmp_path, spool_max_bytes=20_000) as e:
        kept = 0
        with pytest.raises(SpoolFull, match="is full .* restore the broker or give the emitter"):
            for _ in range(1_000):
                e.tool_call(org_id="acme", agent_id="a", connector="c", tool="t", success=True)
                kept += 1
        stats = e.stats()
        assert 0 < kept < 1_000
        assert (stats.spooled, stats.failed, stats.sent) == (kept, 1, 0)
    with Spool(tmp_path) as spool:  # closed cleanly; what it kept is still there
        assert len(spool.read(10_000)[0]) == kept


async def test_an_emitter_refuses_events_before_start_and_after_close(tmp_path, stack):
    e = Emitter(stack.settings.bootstrap_servers, spool_dir=tmp_path)
    call = {"org_id": "acme", "agent_id": "a", "model": "m", "input_tokens": 1, "output_tokens": 1}
    with pytest.raises(RuntimeError, match="the emitter is not running"):
        e.llm_usage(**call)
    async with e:
        e.llm_usage(**call)
    with pytest.raises(RuntimeError, match="the emitter is not running"):
        e.llm_usage(**call)
    assert e.stats().sent == 1


async def test_without_stored_marks_the_emitter_holds_a_bounded_number_then_spools(tmp_path):
    """No worker reads this broker: nothing is ever confirmed as stored. The emitter sends at
    most `unconfirmed_max_events`, keeps the rest in its buffer and spool, refuses once the
    spool is full, and at close keeps on disk what was never confirmed."""
    async with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap_servers, 2)
        spool_dir = tmp_path / "spool"
        e = Emitter(
            broker.bootstrap_servers,
            spool_dir=spool_dir,
            unconfirmed_max_events=200,
            buffer_events=100,
            spool_max_bytes=40_000,
            close_timeout_s=0.5,
        )
        async with e:
            emitted = 0
            with pytest.raises(SpoolFull):
                for _ in range(5_000):
                    e.tool_call(org_id="acme", agent_id="a", connector="c", tool="t", success=True)
                    emitted += 1
                    if emitted % 50 == 0:
                        await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            stats = e.stats()
            assert stats.sent == 200 and stats.unconfirmed == 200 and stats.confirmed == 0
            assert stats.failed == 1 and stats.spooled > 0
            assert not await e.wait_stored(0.3)
        with Spool(spool_dir) as spool:  # every accepted event is on disk for the next emitter
            assert len(spool.read(10_000, max_bytes=1 << 30)[0]) == emitted
