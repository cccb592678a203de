"""Dead letters: read usage.events.dlq, and re-submit fixed (or now valid) messages.

The worker writes each refused message as `{"error", "partition", "offset", "value"}`. The
repair loop is: `tally dlq list --json > dlq.jsonl`, fix the `value` of the lines worth
saving (as JSON text or as a JSON object), `tally dlq replay --fix dlq.jsonl`. A replayed
event is counted once however often it is replayed (see `commands.ops.submit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from commands.ops import kafka
from tally.config import DLQ_TOPIC


@dataclass(frozen=True, slots=True)
class DeadLetter:
    dlq_offset: int
    at_ms: int
    error: str
    partition: int | None  # where the message was on usage.events
    offset: int | None
    value: str

    def as_json(self) -> dict[str, Any]:
        return {
            "dlq_offset": self.dlq_offset,
            "error": self.error,
            "partition": self.partition,
            "offset": self.offset,
            "value": self.value,
        }


def parse(message: kafka.Message) -> DeadLetter:
    """One DLQ message; a message not in the worker's format is shown as it is."""
    try:
        body = orjson.loads(message.value or b"")
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return DeadLetter(
            message.offset,
            message.timestamp_ms,
            str(body.get("error", "")),
            body.get("partition"),
            body.get("offset"),
            str(body.get("value", "")),
        )
    except ValueError:
        raw = (message.value or b"").decode("utf-8", "backslashreplace")
        return DeadLetter(
            message.offset, message.timestamp_ms, "not a Tally dead letter", None, None, raw
        )


async def read(bootstrap: str) -> list[DeadLetter]:
    """Every message on the DLQ, oldest first."""
    out = []
    async with kafka.reader(bootstrap) as consumer:
        ranges = await kafka.log_ranges(consumer, DLQ_TOPIC)
        async for batch in kafka.scan(consumer, DLQ_TOPIC, ranges):
            out += [parse(m) for m in batch]
    out.sort(key=lambda d: (d.at_ms, d.dlq_offset))
    return out


def replay_items(
    letters: Iterable[DeadLetter], offsets: set[int] | None
) -> list[tuple[str, bytes]]:
    """The DLQ messages themselves (all, or those at `offsets`), to replay unchanged: for
    messages refused by a cause since fixed, such as a schema_version Tally now knows."""
    return [
        (f"dlq offset {d.dlq_offset}", d.value.encode())
        for d in letters
        if offsets is None or d.dlq_offset in offsets
    ]


def fix_items(path: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """Events from a fix file, and the lines that are not even JSON.

    Each line is a `tally dlq list --json` line whose `value` was fixed (a JSON string or a
    JSON object), or simply an event object.
    """
    items: list[tuple[str, bytes]] = []
    unreadable: list[tuple[str, str]] = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path.name}:{n}"
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                unreadable.append((where, f"not JSON: {exc}"))
                continue
            if isinstance(obj, dict) and "value" in obj:
                if "dlq_offset" in obj:
                    where += f" (dlq offset {obj['dlq_offset']})"
                value = obj["value"]
                raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
                items.append((where, raw))
            else:
                items.append((where, line))
    return items, unreadable
