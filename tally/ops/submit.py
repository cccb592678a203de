"""Re-submitting events to usage.events so that each is counted once (backfill, DLQ replay).

Three guards, from the cheapest: every event is validated first (a refused one is reported,
never sent); an `(org_id, event_id)` already submitted in this run is sent once; with the
API at hand, an event already stored is skipped. The worker's own event_id dedup window
covers the rest (an event in flight, or a second run while the first is not yet stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from schemas.events import InvalidEvent
from streams.decode import decode
from tally.config import EVENTS_TOPIC
from tally.ops.api import Api

_partitioner = DefaultPartitioner()


@dataclass
class Report:
    sent: int = 0
    already_stored: int = 0
    repeated: int = 0
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    marks: dict[int, int] = field(default_factory=dict)  # partition -> last offset written
    sent_ids: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.sent + self.already_stored + self.repeated + len(self.invalid)


class Submitter:
    """Validate, dedup and send batches of raw events; `report` says what happened to each."""

    def __init__(
        self,
        producer: AIOKafkaProducer | None,
        api: Api | None,
        keep_ids: bool = False,
    ) -> None:
        self.producer = producer  # None: a dry run, nothing is sent
        self.api = api
        self.keep_ids = keep_ids
        self.report = Report()
        self._submitted: set[tuple[str, str]] = set()
        self._partitions: dict[bytes, int] = {}

    async def submit(self, items: list[tuple[str, bytes]]) -> None:
        """`items` are `(where, raw JSON)`; `where` names the line or message in reports."""
        fresh: list[tuple[bytes, str, str]] = []
        for where, raw in items:
            try:
                event = decode(raw)
            except InvalidEvent as exc:
                self.report.invalid.append((where, exc.reason))
                continue
            key = (event["org_id"], event["event_id"])
            if key in self._submitted:
                self.report.repeated += 1
                continue
            self._submitted.add(key)
            fresh.append((raw, event["org_id"], event["event_id"]))
        if self.api is not None and fresh:
            orgs = sorted({org for _, org, _ in fresh})
            stored = await self.api.stored([eid for _, _, eid in fresh], orgs)
            before = len(fresh)
            fresh = [f for f in fresh if f[2] not in stored]
            self.report.already_stored += before - len(fresh)
        if self.producer is not None and fresh:
            await self._send(self.producer, [(org.encode(), raw) for raw, org, _ in fresh])
        self.report.sent += len(fresh)
        if self.keep_ids:
            self.report.sent_ids += [eid for _, _, eid in fresh]

    async def _send(self, producer: AIOKafkaProducer, messages: list[tuple[bytes, bytes]]) -> None:
        """Send `(key, value)` messages in whole record batches, each to the partition the
        producer's default partitioner picks for its key (so an org's backfilled events
        meet its live ones, and the worker's per-partition dedup sees both)."""
        parts = sorted(await producer.partitions_for(EVENTS_TOPIC))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in messages:
            p = self._partitions.get(key)
            if p is None:
                p = self._partitions[key] = _partitioner(key, parts, parts)
            by_partition.setdefault(p, []).append((key, value))
        sent = []
        for p, msgs in by_partition.items():
            batch = producer.create_batch()
            for key, value in msgs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    n = batch.record_count()
                    sent.append((n, await producer.send_batch(batch, EVENTS_TOPIC, partition=p)))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            n = batch.record_count()
            sent.append((n, await producer.send_batch(batch, EVENTS_TOPIC, partition=p)))
        for n, future in sent:
            meta = await future
            last = meta.offset + n - 1
            self.report.marks[meta.partition] = max(self.report.marks.get(meta.partition, -1), last)
