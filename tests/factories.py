"""Factories for test data: `make_event(**overrides)` gives a valid wire event."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tally.domain.partitioning import partition_of

_seq = itertools.count()

DEFAULTS: dict[str, dict[str, Any]] = {
    "llm.usage": {
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 50,
        "cached_input_tokens": 0,
        "mode": "managed",
    },
    "tool.call": {"connector": "github", "tool": "create_issue", "success": True},
    "gateway.request": {"model": "gpt-4o-mini", "cache_hit": False, "mode": "managed"},
    "session.started": {},
    "session.heartbeat": {},
    "session.ended": {},
    "storage.usage": {"kind": "knowledge_base", "byte_seconds": 10**9 * 86_400},
    "admission.requested": {
        "reservation_id": "rsv-1",
        "meter": "sessions",
        "amount": 1,
        "limit": 3,
        "session_id": None,
        "expires_at": (datetime.now(UTC) + timedelta(seconds=10)).isoformat(),
    },
}


def make_event(type: str = "llm.usage", **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "org_id": "org-test",
        "agent_id": "agent-1",
        "run_id": f"run-{next(_seq)}",
        "session_id": "sess-1",
        "key_mode": "live",
        "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "type": type,
        **DEFAULTS[type],
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def wire(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def orgs_on(partition: int, partitions: int, count: int = 1, prefix: str = "org") -> list[str]:
    """Fresh org ids that Kafka's default partitioner maps to `partition` of `partitions`."""
    found: list[str] = []
    while len(found) < count:
        org = f"{prefix}-{uuid.uuid4().hex[:10]}"
        if partition_of(org, partitions) == partition:
            found.append(org)
    return found


def orgs_across(partition: int, before: int, after: int, prefix: str = "org") -> list[str]:
    """Three fresh org ids on `partition` of `before` partitions: two that map elsewhere
    under `after` partitions and one that stays, so a test of a partition-count change
    always has orgs that move and orgs that do not (a random pick of 12 all move 1 in 130)."""
    stays: list[str] = []
    moves: list[str] = []
    while not stays or len(moves) < 2:
        (org,) = orgs_on(partition, before, prefix=prefix)
        kept = partition_of(org, after) == partition
        if kept and not stays:
            stays.append(org)
        elif not kept and len(moves) < 2:
            moves.append(org)
    return [*moves, *stays]
