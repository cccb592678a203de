"""The in-memory counter table: a replica of the `usage.counters` topic.

Every message is an absolute value, so the table only keeps the latest one per key, and
reading the topic again from the start rebuilds it. Quota reads are dict lookups here and
never touch ClickHouse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tally.config import COUNTERS_TOPIC
from tally.domain import counters
from tally.domain.counters import HEARTBEAT_KEY, CounterKey, decode_key
from tally.kafka_clients import FetchPace, stop_client

log = logging.getLogger("tally.counters")
CLOSE_TIMEOUT_S = 5.0
# Fetch waits (`FetchPace`): quick while counters move, calmer when only heartbeats come.
BUSY_FETCH_WAIT_MS = 20
IDLE_FETCH_WAIT_MS = 100
_BEAT_PREFIX = f"{HEARTBEAT_KEY}\x1f".encode()  # encode_key's form of a heartbeat's key


def _beat(key: bytes | None) -> bool:
    return key is not None and key.startswith(_BEAT_PREFIX)


# How long a value handed over by the worker in this process outranks older values still on
# their way through the topic (the topic brings every value back within a fraction of this).
HANDED_OVER_FOR_MS = 60_000


class CounterTable:
    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.values: dict[CounterKey, int] = {}
        self.beats: dict[int, tuple[int, int]] = {}  # partition -> (current-to ms, lag)
        self._freshness: tuple[int | None, int | None] = (None, None)  # of `beats`
        # What a quota read's answer can be cached by: a count per org that moves whenever
        # one of its values does, and one for the whole table (caught up, expired).
        self._org_changes: dict[str, int] = {}
        self._table_changes = 0
        self.ready = asyncio.Event()
        self.applied = 0
        # Window totals already summed, per (org, name): {(first day, end day): total}, kept
        # current as values arrive, so that a quota read is a lookup, not a sum of days.
        self._sums: dict[tuple[str, str], dict[tuple[int, int], int]] = {}
        # Keys the worker in this process handed over (`hand_over`), with the time in ms their
        # value is current to, for HANDED_OVER_FOR_MS.
        self._handed: dict[CounterKey, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def changes(self, org_id: str) -> tuple[int, int]:
        """Moves whenever anything a read of `org_id` gives may have changed."""
        return self._table_changes, self._org_changes.get(org_id, 0)

    def get(self, key: CounterKey) -> int:
        return self.values.get(key, 0)

    def total(self, org_id: str, name: str, buckets: Iterable[int]) -> int:
        """The sum over `buckets`; a range of them (a billing window) is summed once."""
        values = self.values
        if not isinstance(buckets, range) or buckets.step != 1:
            return sum(values.get((org_id, name, b), 0) for b in buckets)
        windows = self._sums.get((org_id, name))
        span = (buckets.start, buckets.stop)
        if windows is not None and span in windows:
            return windows[span]
        value = sum(values.get((org_id, name, b), 0) for b in buckets)
        self._sums.setdefault((org_id, name), {})[span] = value
        return value

    def set(self, key: CounterKey, value: int) -> None:
        """Take a key's latest absolute value, and move the window totals that include it."""
        before = self.values.get(key, 0)
        self.values[key] = value
        if value == before:
            return
        org = key[0]
        self._org_changes[org] = self._org_changes.get(org, 0) + 1
        windows = self._sums.get((org, key[1]))
        if windows:
            bucket = key[2]
            for span in windows:
                if span[0] <= bucket < span[1]:
                    windows[span] += value - before

    def hand_over(self, values: dict[CounterKey, int], at_ms: int) -> None:
        """Values from the worker in this process, as it prepares each fetch: quota reads see
        them without the round trip through the topic. The topic brings them back later,
        with the messages published before them; a message published no later than the
        value handed over for its key is not applied, so a read never goes back to it."""
        handed = self._handed
        for key, value in values.items():
            self.set(key, value)
            handed[key] = at_ms

    def _forget_handed(self, now_ms: int) -> None:
        cutoff = now_ms - HANDED_OVER_FOR_MS
        for key in [k for k, at in self._handed.items() if at < cutoff]:
            del self._handed[key]

    def keys_of(self, org_id: str) -> list[CounterKey]:
        return [k for k in self.values if k[0] == org_id]

    def forget(self, key: CounterKey) -> None:
        """A tombstone: the counter is gone (its org was purged)."""
        if self.values.pop(key, None) is not None:
            self._org_changes[key[0]] = self._org_changes.get(key[0], 0) + 1
            self._sums.pop((key[0], key[1]), None)

    def expire(self, now: datetime) -> int:
        """Drop counters no quota read can need any more; returns how many."""
        stale = [k for k in self.values if counters.expired(k, now)]
        for k in stale:
            del self.values[k]
        self._sums.clear()  # summed again on the next read of each window
        self._table_changes += 1
        return len(stale)

    def freshness(self) -> tuple[int | None, int | None]:
        """(time in ms the counters are current to, events not yet counted), if known."""
        return self._freshness

    async def broker_reachable(self) -> bool:
        """A metadata round trip to the broker, within a second."""
        if self._consumer is None:
            return False
        try:
            await asyncio.wait_for(self._consumer.topics(), 1.0)
        except Exception:
            return False
        return True

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=BUSY_FETCH_WAIT_MS,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = None
        while not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(COUNTERS_TOPIC)
            if not partitions:
                await asyncio.sleep(0.2)
        tps = [TopicPartition(COUNTERS_TOPIC, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run(tps), name="tally-counter-table")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await stop_client(self._consumer, CLOSE_TIMEOUT_S)
            self._consumer = None

    async def _run(self, tps: list[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        pending = set(tps)
        next_offset: dict[int, int] = {}
        last_expire = last_forget = time.monotonic()
        # Heartbeats come twice a second from every worker: only counters count as activity.
        pace = FetchPace(consumer, BUSY_FETCH_WAIT_MS, IDLE_FETCH_WAIT_MS)
        while True:
            if time.monotonic() - last_expire > 60:
                self.expire(datetime.now(UTC))
                last_expire = time.monotonic()
            if self._handed and time.monotonic() - last_forget > 10:
                self._forget_handed(int(time.time() * 1000))
                last_forget = time.monotonic()
            fetched = await consumer.getmany(timeout_ms=100, max_records=50_000)
            pace.observe(any(not _beat(m.key) for msgs in fetched.values() for m in msgs))
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None and high < next_offset.get(tp.partition, 0):
                    # The log ends before what we applied: an empty broker came back (it
                    # answers such a fetch with nothing), and the worker republishes every
                    # counter on it. Read it from its start.
                    log.warning(
                        "usage.counters/%d restarted (log ends at %d, we were at %d)",
                        tp.partition,
                        high,
                        next_offset[tp.partition],
                    )
                    next_offset[tp.partition] = 0
                    consumer.seek(tp, 0)
            for tp, msgs in fetched.items():
                start = next_offset.get(tp.partition, 0)
                # A fetch can start at the first offset of a record batch and hand back
                # messages already applied; an older absolute value must never win.
                for m in msgs:
                    if m.offset >= start:
                        self._apply(m.key, m.value)
                if msgs:
                    next_offset[tp.partition] = max(start, msgs[-1].offset + 1)
            # Caught up once every partition has answered a fetch and we hold all it has.
            # (The high watermark of a fetch, not ListOffsets: the embedded broker answers
            # ListOffsets with the first offset of the last batch.)
            if pending:
                pending = {
                    tp
                    for tp in pending
                    if (high := consumer.highwater(tp)) is None
                    or await consumer.position(tp) < high
                }
            if not pending and not self.ready.is_set():
                log.info("counter table caught up: %d keys", len(self.values))
                self.ready.set()
                self._table_changes += 1

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        org, name, bucket = decode_key(key)
        if value is None:
            self.forget((org, name, bucket))
            return
        data = orjson.loads(value)
        if org == HEARTBEAT_KEY:
            beats = self.beats
            beats[int(name)] = (int(data["t"]), int(data["v"]))
            # Read by every quota read; summed here, once per heartbeat.
            self._freshness = (
                min(t for t, _ in beats.values()),
                sum(lag for _, lag in beats.values()),
            )
            return
        counter = (org, name, bucket)
        if self._handed:
            at = self._handed.get(counter)
            if at is not None and int(data["t"]) <= at:
                return  # this value, or a later one, was handed over already
        self.set(counter, int(data["v"]))
        self.applied += 1

    def staleness_s(self) -> float | None:
        current, _ = self.freshness()
        return None if current is None else max(0.0, time.time() - current / 1000)
