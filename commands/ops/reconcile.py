"""`tally reconcile`: the broker's events, the stored rows and the counters, per org and day.

The command reads usage.events itself, from each partition's first offset to its end at
the time of the scan, and counts the distinct valid events the way the worker does (dedup
by event_id, priced by the same price book: the worker's dedup window follows an org to the
partition it maps to, and an event forwarded there from another partition is on the broker
twice). The API (which owns the store
and the counter table) answers the stored rows of exactly those offsets, all stored rows
of the window, and the counters. `tally.domain.reconcile` compares them.

While events flow, a batch may be stored but not yet counted, or on the broker but not yet
stored: differences are re-checked for `settle_s` seconds and only the lasting ones are
reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson

from commands.ops import kafka
from commands.ops.api import Api
from commands.ops.text import table
from schemas.events import InvalidEvent
from streams.decode import decode
from tally.config import EVENTS_TOPIC
from tally.domain import reconcile as rec
from tally.domain.pricing import Pricer
from tally.domain.usage import measure


@dataclass
class BrokerScan:
    ranges: dict[int, tuple[int, int]]
    figures: rec.Table = field(default_factory=dict)
    messages: int = 0
    invalid: int = 0
    duplicates: int = 0


@dataclass
class Result:
    scan: BrokerScan
    epochs: dict[int, list[str]]
    stored: rec.Table
    seen: rec.Table
    rollups: rec.Table
    counters: rec.Table
    counters_since: date
    differences: list[rec.Difference]
    org_id: str | None = None


async def scan_broker(
    bootstrap: str, pricer: Pricer, start: date, end: date, org_id: str | None
) -> BrokerScan:
    async with kafka.reader(bootstrap) as consumer:
        result = BrokerScan(await kafka.log_ranges(consumer, EVENTS_TOPIC))
        ids: set[str] = set()
        # With one org, a message that does not even contain its quoted id is not its event
        # (event ids are unique across orgs, so skipping it changes no dedup decision).
        needle = orjson.dumps(org_id) if org_id is not None else b""
        async for batch in kafka.scan(consumer, EVENTS_TOPIC, result.ranges):
            for m in batch:
                if needle and (m.value is None or needle not in m.value):
                    continue
                result.messages += 1
                try:
                    if m.value is None:
                        raise InvalidEvent("message has no value")
                    event = decode(m.value)
                except InvalidEvent:
                    result.invalid += 1
                    continue
                if event["event_id"] in ids:
                    result.duplicates += 1
                    continue
                ids.add(event["event_id"])
                day = event["ts"].date()
                if start <= day < end and (org_id is None or event["org_id"] == org_id):
                    rec.add_usage(result.figures, event["org_id"], day, measure(event, pricer))
    return result


async def broker_epochs(
    bootstrap: str, api: Api, ranges: list[dict[str, int]]
) -> dict[int, list[str]]:
    """Per partition, the log epochs whose stored rows came from the broker's current log.

    A partition's rows may carry several epochs: the worker starts a new one whenever it
    takes the broker's log for a new log. An epoch is this log's when its newest stored row
    in range is the very message the broker holds at that offset; rows of an earlier log
    (an embedded broker restarted empty) are not."""
    probes = (await api.admin("/reconcile/epochs", {"ranges": ranges}))["probes"]
    wanted: dict[int, list[int]] = {}
    for probe in probes:
        wanted.setdefault(probe["partition"], []).append(probe["offset"])
    async with kafka.reader(bootstrap) as consumer:
        values = await kafka.read_at(consumer, EVENTS_TOPIC, wanted)
    out: dict[int, list[str]] = {}
    for probe in probes:
        value = values.get((probe["partition"], probe["offset"]))
        try:
            event_id = orjson.loads(value)["event_id"] if value else None
        except (orjson.JSONDecodeError, TypeError, KeyError):
            event_id = None
        if event_id == probe["event_id"]:
            out.setdefault(probe["partition"], []).append(probe["epoch"])
    return out


def _table(rows: list[dict[str, Any]] | None) -> rec.Table:
    return {(r["org_id"], date.fromisoformat(r["day"])): dict(r["figures"]) for r in rows or []}


async def reconcile(
    bootstrap: str,
    api: Api,
    pricer: Pricer,
    start: date,
    end: date,
    org_id: str | None = None,
    settle_s: float = 10.0,
) -> Result:
    scan = await scan_broker(bootstrap, pricer, start, end, org_id)
    ranges = [{"partition": p, "low": low, "high": high} for p, (low, high) in scan.ranges.items()]
    epochs = await broker_epochs(bootstrap, api, ranges)
    body = {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "org_id": org_id,
        "ranges": ranges,
        "epochs": epochs,
    }
    deadline = asyncio.get_running_loop().time() + settle_s
    while True:
        answer = await api.admin("/reconcile", body)
        since = date.fromisoformat(answer["counters_since"])
        stored, seen = _table(answer["stored"]), _table(answer["seen"])
        counted, rollups = _table(answer["counters"]), _table(answer["rollups"])
        days = {d for _, d in stored} | {d for _, d in counted} | {d for _, d in rollups}
        raw_from = {org: date.fromisoformat(d) for org, d in answer["raw_kept_from"].items()}
        differences = rec.compare(
            scan.figures, seen, stored, counted, {d for d in days if d >= since}, rollups, raw_from
        )
        if not differences or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.5)
    return Result(scan, epochs, stored, seen, rollups, counted, since, differences, org_id)


def render(result: Result, start: date, end: date) -> str:
    scan = result.scan
    broker, stored, counted = (
        rec.totals(scan.figures),
        rec.totals(result.stored),
        rec.totals(result.counters),
    )
    names = ("events",) + rec.MONEY_AND_METERS
    out = [
        f"window {start} .. {end} (UTC days, end exclusive); broker: {scan.messages} messages"
        f"{' of this org' if result.org_id else ''} read ({scan.invalid} invalid,"
        f" {scan.duplicates} duplicate event ids); store epochs"
        f" {', '.join(sorted({e for es in result.epochs.values() for e in es})) or '-'};"
        f" counters kept from {result.counters_since}",
        "",
        table(
            ["figure", "broker", "stored", "counters"],
            [
                [
                    n,
                    broker.get(n, 0),
                    stored.get(n, 0),
                    None if n == "events" else counted.get(n, 0),
                ]
                for n in names
            ],
        ),
        "",
    ]
    if not result.differences:
        orgs = len({org for org, _ in result.stored} | {org for org, _ in scan.figures})
        out.append(f"CLEAN: no difference ({orgs} org{'' if orgs == 1 else 's'} checked)")
        return "\n".join(out)
    out.append(f"{len(result.differences)} DIFFERENCES")
    out.append(
        table(
            ["org", "day", "check", "figure", "expected", "found", "delta"],
            [
                [d.org_id, d.day, d.check, d.figure, d.expected, d.found, d.delta]
                for d in result.differences
            ],
        )
    )
    out += [
        "",
        "broker/store: expected = distinct valid events on the broker, found = stored rows of"
        " the same offsets (missing: not stored yet or lost; extra: stored twice or changed).",
        "store/rollups: expected = stored rows, found = the daily rollup (reports, credits).",
        "store/counters: expected = stored rows, found = quota counters.",
        "rollups/counters: days whose raw events the plan's retention deleted.",
        "duplicates: expected = distinct event ids, found = stored rows.",
    ]
    return "\n".join(out)


def as_dict(result: Result) -> dict[str, Any]:
    return {
        "clean": not result.differences,
        "epochs": {str(p): e for p, e in result.epochs.items()},
        "broker": {
            "messages": result.scan.messages,
            "invalid": result.scan.invalid,
            "duplicates": result.scan.duplicates,
            "totals": rec.totals(result.scan.figures),
        },
        "stored_totals": rec.totals(result.stored),
        "counter_totals": rec.totals(result.counters),
        "differences": [
            {
                "org_id": d.org_id,
                "day": d.day.isoformat(),
                "check": d.check,
                "figure": d.figure,
                "expected": d.expected,
                "found": d.found,
            }
            for d in result.differences
        ],
    }
