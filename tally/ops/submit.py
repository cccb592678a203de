"""Re-submitting events to usage.events so that each is counted once (backfill, DLQ replay).

Three guards, from the cheapest: every event is validated first (a refused one is reported,
never sent); an `(org_id, event_id)` already submitted in this run is sent once; with the
API at hand, an event already stored is skipped. The worker's own event_id dedup window
covers the rest (an event in flight, or a second run while the first is not yet stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from schemas.events import InvalidEvent
from streams.decode import decode
from tally.config import EVENTS_TOPIC
from tally.ops.api import Api


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
            futures = [
                await self.producer.send(EVENTS_TOPIC, raw, key=org.encode())
                for raw, org, _ in fresh
            ]
            for meta in [await f for f in futures]:
                mark = self.report.marks.get(meta.partition, -1)
                self.report.marks[meta.partition] = max(mark, meta.offset)
        self.report.sent += len(fresh)
        if self.keep_ids:
            self.report.sent_ids += [eid for _, _, eid in fresh]
