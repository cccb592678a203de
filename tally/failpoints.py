"""Failpoints: named places where tests (and operators rehearsing incidents) inject faults.

`TALLY_FAILPOINTS="worker.after_insert=crash@3,store.insert=error"` makes the third pass
through `worker.after_insert` kill the process with SIGKILL and every store insert fail.
Actions: `crash` (SIGKILL this process) and `error` (raise FailpointError). `@N` fires on
the Nth hit only. Tests in the same process use `enable()` / `disable()`. With nothing set,
`hit()` is one dict lookup.
"""

from __future__ import annotations

import os
import signal

_points: dict[str, tuple[str, int]] = {}
_hits: dict[str, int] = {}


class FailpointError(RuntimeError):
    """A fault injected on purpose."""


def _load(spec: str) -> None:
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if action not in ("crash", "error"):
            raise ValueError(f"failpoint {name!r}: action must be crash or error, not {action!r}")
        _points[name] = (action, int(nth) if nth else 0)


def enable(name: str, action: str = "error", nth: int = 0) -> None:
    _load(f"{name}={action}@{nth}" if nth else f"{name}={action}")


def disable(name: str) -> None:
    _points.pop(name, None)
    _hits.pop(name, None)


def hit(name: str) -> None:
    point = _points.get(name)
    if point is None:
        return
    action, nth = point
    count = _hits[name] = _hits.get(name, 0) + 1
    if nth and count != nth:
        return
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailpointError(f"failpoint {name} fired")


_load(os.environ.get("TALLY_FAILPOINTS", ""))
