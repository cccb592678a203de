"""`tally backfill FILE.jsonl`: historical events into usage.events, each counted once.

The file is read line by line (one JSON event per line, the wire format), in chunks: a bad
line is reported with its number and reason and the run goes on; good lines go through
`tally.ops.submit` (dedup within the file, skip what is already stored, then the worker's
own dedup). With `wait`, the command returns once the worker has committed past the last
event sent, so "done" means stored and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tally.config import EVENTS_TOPIC
from tally.ops import kafka
from tally.ops.api import Api
from tally.ops.submit import Report, Submitter
from tally.ops.text import Progress

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


async def backfill(
    path: Path,
    bootstrap: str,
    api: Api | None,
    progress: Progress,
    dry_run: bool = False,
) -> Report:
    async with kafka.writer(bootstrap) as producer:
        submitter = Submitter(None if dry_run else producer, api)
        for chunk in chunks(path):
            await submitter.submit(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return submitter.report


async def wait_stored(
    bootstrap: str, group_id: str, report: Report, timeout: float
) -> dict[int, int]:
    """Partitions whose last backfilled event the worker has not committed within `timeout`."""
    if not report.marks:
        return {}
    async with kafka.group_reader(bootstrap, group_id) as group:
        return await kafka.wait_committed(group, EVENTS_TOPIC, report.marks, timeout)
