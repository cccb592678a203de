"""Keeps an API process's orgs, keys and subscriptions in step with the store.

API replicas share one store and each serves from memory, so what one replica writes (an
org, a key, a revocation, a plan change) reaches the others when they next merge the store
into their memory: every `TALLY_REGISTRY_REFRESH_S` (2 s by default), reading only what was
written lately, and everything every `FULL_RELOAD_S`. Requests never wait on it; while the
store is down a replica keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import logging
import time

from api.background import Background
from api.registry import FULL_RELOAD_S, Registry
from tally import metrics

log = logging.getLogger("tally.registry")


class RegistryRefresher(Background):
    """`start()` / `stop()` a task that refreshes `registry` every `interval_s` seconds."""

    name = "tally-registry-refresh"

    def __init__(self, registry: Registry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.refreshes = 0
        super().__init__()

    async def _run(self) -> None:
        last_full = time.monotonic()  # the registry was loaded in full at start-up
        failing = False
        while True:
            await asyncio.sleep(self.interval_s)
            full = time.monotonic() - last_full >= FULL_RELOAD_S
            started = time.perf_counter()
            try:
                await self.registry.refresh(full=full)
            except Exception as exc:  # the store may be down: serve what we have, retry
                if not failing:
                    log.warning("cannot refresh orgs and keys from the store (%s); retrying", exc)
                failing = True
                continue
            if failing:
                log.info("orgs and keys refreshed from the store again")
                failing = False
            if full:
                last_full = time.monotonic()
            self.refreshes += 1
            metrics.registry_refreshed(time.perf_counter() - started)
