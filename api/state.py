"""What the API handlers share: passed in explicitly by the app factory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from api.counter_table import CounterTable
from api.registry import Registry
from schemas.plans import Catalogue
from tally.config import Settings
from tally.store import Store

if TYPE_CHECKING:
    from producers.emitter import Emitter

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    store: Store
    registry: Registry
    counters: CounterTable
    plans: Catalogue
    checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)
    topup_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # credit top-ups, one at a time
    emitter: Emitter | None = None  # HTTP ingestion's way onto usage.events
    # Components the runtime adds, by type (e.g. `api.alerts.service.Alerting`, which itself
    # is built on these services): see `part`.
    parts: dict[type, object] = field(default_factory=dict)

    def part(self, kind: type[T]) -> T | None:
        """The component of that type the runtime added, if any."""
        found = self.parts.get(kind)
        return found if isinstance(found, kind) else None
