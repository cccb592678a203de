"""`tally backfill FILE.jsonl [--from DAY --to DAY]`: historical events into usage.events,
each counted once.

The file is read line by line (one JSON event per line, the wire format), in chunks: a bad
line is reported with its number and reason and the run goes on; good lines go through
`commands.ops.submit` (dedup within the file, skip what is already stored, then the worker's
own dedup). With `wait`, the command returns once the workers' stored marks (the end-to-end
acknowledgement, `schemas.marks`) have passed every event sent, in the log of the broker
that took them, so "done" means stored and counted; if that broker restarted empty or lost
some of them, the command says so and running it again sends just those (the others are
already stored).

Events older than TALLY_MAX_EVENT_AGE_DAYS are history: they need an explicit range of UTC
days (`--from`, and `--to`, the day after the last), sent with each event, within which the
worker takes them (tally.domain.eventtime). Without a range, a file holding such events is
refused before anything is sent (`too_old`), with the range that would take it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from commands.ops import kafka
from commands.ops.api import Api
from commands.ops.submit import Report, Submitter
from commands.ops.text import Progress
from producers.marks import MarksReader
from schemas.events import InvalidEvent
from schemas.marks import StoredMarks
from streams.decode import decode
from tally.domain.eventtime import DEFAULT, Backfill, EventTime

CHUNK = 5_000


def count_lines(path: Path) -> int:
    """Non-blank lines: the progress bar's total."""
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def chunks(path: Path, size: int = CHUNK) -> Iterator[list[tuple[str, bytes]]]:
    """`(line number, raw line)` in chunks, blank lines left out."""
    chunk: list[tuple[str, bytes]] = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                chunk.append((f"line {n}", line))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True, slots=True)
class TooOld:
    """Events of a file older than the age limit, and the range of days that would take the
    whole file."""

    count: int
    first: str  # where the first one is: "line N"
    first_ts: datetime
    suggested: Backfill


def too_old(path: Path, event_time: EventTime, now: datetime) -> TooOld | None:
    """The file's events the worker would refuse for their age without a range, if any
    (lines that are not valid events are left to the run to report)."""
    oldest, _ = event_time.bounds(now)
    count, first, first_ts = 0, "", None
    low = high = None
    for chunk in chunks(path):
        for where, raw in chunk:
            try:
                ts = decode(raw)["ts"]
            except InvalidEvent:
                continue
            low = ts if low is None or ts < low else low
            high = ts if high is None or ts > high else high
            if ts < oldest:
                count += 1
                if first_ts is None:
                    first, first_ts = where, ts
    if first_ts is None or low is None or high is None:
        return None
    suggested = Backfill(low.date(), high.date() + timedelta(days=1))
    return TooOld(count, first, first_ts, suggested)


async def backfill(
    path: Path,
    bootstrap: str,
    api: Api | None,
    progress: Progress,
    dry_run: bool = False,
    history: Backfill | None = None,
    event_time: EventTime = DEFAULT,
) -> Report:
    """Send the file's events; with `history`, as history of that range (each must be in it)."""
    async with kafka.writer(bootstrap) as producer:
        submitter = Submitter(
            None if dry_run else producer, api, event_time=event_time, backfill=history
        )
        for chunk in chunks(path):
            await submitter.submit(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return submitter.report


async def wait_stored(bootstrap: str, report: Report, timeout: float) -> dict[int, int]:
    """Partitions (with their last offset sent) not confirmed as stored within `timeout` by
    a stored mark of the broker that took them, or lost by that broker (a gap, a restart)."""
    pending = dict(report.marks)
    if not pending:
        return {}
    if report.broker_changed or report.cluster is None:
        return pending
    lost: dict[int, int] = {}
    done = asyncio.Event()

    def on_marks(marks: StoredMarks) -> None:
        if marks.cluster != report.cluster:
            return
        for p, last in list(pending.items()):
            if marks.marks.get(p, 0) > last:
                del pending[p]
                if _overlap(report.written.get(p, []), marks.gaps.get(p, [])):
                    lost[p] = last
        if not pending:
            done.set()

    reader = MarksReader(bootstrap, on_marks, client_id="tally-ops-marks")
    await reader.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        await reader.stop()
    return {**pending, **lost}


def _overlap(written: list[tuple[int, int]], gaps: list[tuple[int, int]]) -> bool:
    return any(a <= d and c <= b for a, b in written for c, d in gaps)
