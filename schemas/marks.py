"""The stored marks: how far each partition of `usage.events` is stored, for producers.

A worker publishes a mark on `usage.stored` after each insert and every half second: per
partition it owns, the offset up to which every event is stored (`next_offset`: all offsets
below it), in the log of the broker whose cluster id is `cluster`. A producer keeps every
event the broker acknowledged, with its partition, offset and the cluster id it was written
to, until a mark of the same cluster passes its offset (docs/events.md, "End-to-end
acknowledgement"). A broker that restarts empty has a new cluster id: marks of the old one
confirm nothing written to the new one, and the producer sends again what no mark of its
cluster confirmed (the worker drops copies by `event_id`).

`gaps` lists, per partition, the latest offset ranges below the mark that the worker passed
without reading them (a hole the broker never filled: the embedded broker can lose a batch
it gave offsets to). An event acknowledged at such an offset is not stored: the producer
sends it again.

    {"cluster": "tally-embedded-7f...", "epoch": "tally-embedded-7f...", "at": 1765000000000,
     "marks": {"0": 1200, "3": 87}, "gaps": {"3": [[7, 829]]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

STORED_TOPIC = "usage.stored"


@dataclass(frozen=True, slots=True)
class StoredMarks:
    cluster: str
    epoch: str
    at_ms: int
    marks: dict[int, int]  # partition -> next offset not yet stored
    gaps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # passed, not read


def encode_marks(marks: StoredMarks) -> bytes:
    return orjson.dumps(
        {
            "cluster": marks.cluster,
            "epoch": marks.epoch,
            "at": marks.at_ms,
            "marks": {str(p): n for p, n in marks.marks.items()},
            "gaps": {str(p): [list(g) for g in gaps] for p, gaps in marks.gaps.items() if gaps},
        }
    )


def decode_marks(value: bytes | None) -> StoredMarks | None:
    """A mark message, or None for anything that is not one (it is then ignored)."""
    try:
        raw: Any = orjson.loads(value or b"")
        cluster, epoch, at, marks = raw["cluster"], raw["epoch"], raw["at"], raw["marks"]
        if not (isinstance(cluster, str) and cluster and isinstance(epoch, str)):
            return None
        if not isinstance(at, int) or not isinstance(marks, dict):
            return None
        parsed = {int(p): int(n) for p, n in marks.items() if isinstance(n, int) and n >= 0}
        gaps = {
            int(p): [(int(a), int(b)) for a, b in ranges]
            for p, ranges in raw.get("gaps", {}).items()
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return StoredMarks(cluster, epoch, at, parsed, gaps)
