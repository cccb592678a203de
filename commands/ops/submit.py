"""Re-submitting events to usage.events so that each is counted once (backfill, DLQ replay).

Three guards, from the cheapest: every event is validated first, its `ts` against the
event-time policy too (a refused one is reported, never sent: the worker would refuse it as
well); an `(org_id, event_id)` already submitted in this run is sent once; with the API at
hand, an event already stored is skipped. The worker's own event_id dedup window covers the
rest (an event in flight, or a second run while the first is not yet stored).

History (`tally backfill --from --to`) is sent with its range (`Backfill`, a Kafka header):
every event must fall in it, and the worker takes events older than the age limit in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from commands.ops.api import Api
from schemas.events import InvalidEvent
from streams.decode import decode
from tally.config import EVENTS_TOPIC
from tally.domain.eventtime import DEFAULT, Backfill, EventTime, iso
from tally.kafka_clients import cluster_id

_partitioner = DefaultPartitioner()


@dataclass
class Report:
    sent: int = 0
    already_stored: int = 0
    repeated: int = 0
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    marks: dict[int, int] = field(default_factory=dict)  # partition -> last offset written
    written: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # offset ranges
    cluster: str | None = None  # the broker all of them went to (None: not proven)
    broker_changed: bool = False  # the broker restarted during the run: send them again
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
        event_time: EventTime = DEFAULT,
        backfill: Backfill | None = None,
    ) -> None:
        self.producer = producer  # None: a dry run, nothing is sent
        self.api = api
        self.keep_ids = keep_ids
        self.event_time = event_time
        self.backfill = backfill
        self._headers = [backfill.header()] if backfill is not None else []
        self.report = Report()
        self._submitted: set[tuple[str, str]] = set()
        self._partitions: dict[bytes, int] = {}

    async def submit(self, items: list[tuple[str, bytes]]) -> None:
        """`items` are `(where, raw JSON)`; `where` names the line or message in reports."""
        fresh: list[tuple[bytes, str, str]] = []
        now = datetime.now(UTC)
        for where, raw in items:
            try:
                event = decode(raw)
            except InvalidEvent as exc:
                self.report.invalid.append((where, exc.reason))
                continue
            refused = self.refusal(event["ts"], now)
            if refused is not None:
                self.report.invalid.append((where, refused))
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

    def refusal(self, ts: datetime, now: datetime) -> str | None:
        """Why an event of time `ts` is not sent: outside the range of history being sent,
        or refused by the event-time policy the worker applies too."""
        history = self.backfill
        if history is not None and not history.covers(ts):
            return f"ts: {iso(ts)} is outside the backfill range ({history})"
        return self.event_time.refusal(ts, now, history)

    async def _send(self, producer: AIOKafkaProducer, messages: list[tuple[bytes, bytes]]) -> None:
        """Send `(key, value)` messages in whole record batches, each to the partition the
        producer's default partitioner picks for its key (so an org's backfilled events
        meet its live ones, and the worker's per-partition dedup sees both)."""
        before = self.report.cluster or await cluster_id(producer.client)
        parts = sorted(await producer.partitions_for(EVENTS_TOPIC))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in messages:
            p = self._partitions.get(key)
            if p is None:
                p = self._partitions[key] = _partitioner(key, parts, parts)
            by_partition.setdefault(p, []).append((key, value))
        sent, headers = [], self._headers
        for p, msgs in by_partition.items():
            batch = producer.create_batch()
            for key, value in msgs:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    n = batch.record_count()
                    sent.append((n, await producer.send_batch(batch, EVENTS_TOPIC, partition=p)))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            n = batch.record_count()
            sent.append((n, await producer.send_batch(batch, EVENTS_TOPIC, partition=p)))
        for n, future in sent:
            meta = await future
            last = meta.offset + n - 1
            self.report.marks[meta.partition] = max(self.report.marks.get(meta.partition, -1), last)
            self.report.written.setdefault(meta.partition, []).append((meta.offset, last))
        # The same cluster id before and after the acknowledgements proves which log they
        # are offsets in (`schemas.marks`): the stored marks of that cluster tell when they
        # are stored.
        after = await cluster_id(producer.client)
        if after != before:
            self.report.broker_changed = True
        self.report.cluster = after
