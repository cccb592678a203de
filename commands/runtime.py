"""Wire one Tally process: embedded broker (optional), store, worker, API services.

`tally up` runs all of it in one process (the embedded default: a chDB directory belongs to
one process). `tally worker` and `tally api` run the halves against a Kafka cluster and a
ClickHouse server. Test fixtures use the same class.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import AsyncExitStack
from typing import Any

from api.alerts.service import Alerting
from api.counter_table import CounterTable
from api.invoicing import InvoiceBook, InvoiceCloser
from api.refresh import RegistryRefresher
from api.registry import FULL_RELOAD_S, Registry
from api.retention import RetentionSweeper
from api.state import Services
from producers.emitter import Emitter
from streams.sink import ClickHouseSink
from streams.worker import Worker
from tally.broker import EmbeddedBroker
from tally.catalogue import load_plans, load_prices
from tally.config import Settings
from tally.store import Store, redact
from tally.topics import ensure_topics

log = logging.getLogger("tally")

# Young collections every 50,000 allocations instead of 700: a fetch's rows and decoded
# events live until their insert, and with the default the collector scans and promotes
# them dozens of times per fetch. Measured in `tally bench` (docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """The garbage collector settings of a long-running Tally process (`tally up`, `tally
    worker`, `tally api`, and `tally bench`, whose ceiling runs under the same setting)."""
    gc.set_threshold(*GC_THRESHOLDS)


def settle_gc() -> None:
    """Once started: keep what start-up loaded (modules, the registry, the catalogue, the
    worker's state) out of every later collection. Each full collection otherwise scanned
    all of it again (70-90 ms over 137,000 objects in the API), and every collection costs
    quota reads their p99 (docs/benchmarks.md). Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


class Tally:
    def __init__(
        self,
        settings: Settings,
        *,
        worker: bool = True,
        api: bool = True,
        broker: EmbeddedBroker | None = None,
    ) -> None:
        self.settings = settings
        self.want_worker = worker
        self.want_api = api
        self.broker = broker
        self._own_broker = False
        self.store: Store | None = None
        self.worker: Worker | None = None
        self.faust_app: Any = None
        self._exit = AsyncExitStack()
        self.services: Services | None = None
        self.retention: RetentionSweeper | None = None
        self.invoicer: InvoiceCloser | None = None
        self.refresher: RegistryRefresher | None = None

    async def start(self) -> None:
        s = self.settings
        plans, book = load_plans(s.plans_file), load_prices(s.prices_file)
        # The store opens (and migrates) while the broker starts: neither needs the other.
        self.store = Store(s.store_url)
        store_started = asyncio.create_task(self.store.start(), name="tally-store-start")
        try:
            await self._start_broker()
        except BaseException:
            store_started.cancel()
            await asyncio.gather(store_started, return_exceptions=True)
            raise
        await store_started
        s = self.settings
        assert s.bootstrap_servers is not None  # resolved with the broker
        if self.want_worker:
            sink = ClickHouseSink(self.store, s.log_epoch, s.dedup_window_s)
            # The broker this process started serves its worker alone: no group to form.
            self.worker = Worker(s, sink, book, sole=self._own_broker)
        if self.want_api:
            registry = Registry(self.store)
            await registry.refresh()
            # `tally up` on its embedded store (chDB) is the only API of that store: no other
            # replica writes orgs or keys to merge, so only the rare full reload runs.
            alone = self._own_broker and s.store_url.startswith("chdb://")
            refresh_s = FULL_RELOAD_S if alone else s.registry_refresh_s
            self.refresher = RegistryRefresher(registry, refresh_s)
            await self.refresher.start()
            counters = CounterTable(s.bootstrap_servers)
            await counters.start()
            self.services = Services(s, self.store, registry, counters, plans)
            self.services.emitter = await self._start_emitter()
            self.retention = RetentionSweeper(self.services, s.retention_interval_s)
            await self.retention.start()
            self.invoicer = InvoiceCloser(InvoiceBook(self.services), s.invoice_interval_s)
            await self.invoicer.start()
            # A `tally up`'s API is the only one of its broker: it owns every org's alerts.
            alerts = self.services.parts[Alerting] = Alerting(self.services, sole=self._own_broker)
            await alerts.start()
            if self.worker is not None:
                worker = self.worker
                # One process: the worker's counters reach quota reads without the round
                # trip through the counters topic (which still carries them to other APIs).
                worker.hand_over = counters.hand_over
                worker.closed_orgs = registry.closed_orgs

                async def worker_ready() -> bool:
                    return worker.ready.is_set()

                self.services.checks["worker"] = worker_ready
        log.info("tally started: broker %s, store %s", s.bootstrap_servers, redact(s.store_url))

    async def _start_broker(self) -> None:
        """The embedded broker, unless Kafka is configured, and Tally's topics on it."""
        s = self.settings
        if s.embedded_broker:
            if self.broker is None:
                self.broker = EmbeddedBroker(
                    s.broker_port, s.broker_bin, pidfile=s.data_dir / "broker.pid", sole=True
                )
                self._own_broker = True
            if not self.broker.running:
                await self.broker.__aenter__()
            # A fresh embedded broker has a fresh log: offsets stored for another are void.
            epoch = s.log_epoch if not self._own_broker else self.broker.cluster_id
            s = self.settings = s.model_copy(
                update={"bootstrap_servers": self.broker.bootstrap_servers, "log_epoch": epoch}
            )
        assert s.bootstrap_servers is not None
        await ensure_topics(s.bootstrap_servers, s.partitions)

    async def _start_emitter(self) -> Emitter:
        """The emitter HTTP ingestion hands accepted events to (spool in the data dir)."""
        assert self.settings.bootstrap_servers is not None
        emitter = Emitter(
            self.settings.bootstrap_servers, spool_dir=self.settings.data_dir / "spool" / "api"
        )
        await emitter.start()
        return emitter

    async def start_worker(self) -> None:
        """Start the worker under its faust app (after `start()`)."""
        from faust.contrib.asgi import faust_app_running

        from streams.app import create_faust_app

        assert self.worker is not None
        # Faust keeps its files in the data directory; with a ClickHouse server nothing else
        # has created it.
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.faust_app = create_faust_app(self.settings, self.worker)
        await self._exit.enter_async_context(faust_app_running(self.faust_app, stop_timeout=30))

    async def stop(self) -> None:
        await self._exit.aclose()
        if self.faust_app is None and self.worker is not None:
            await self.worker.stop()
        self.faust_app = None
        if self.refresher is not None:
            await self.refresher.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.invoicer is not None:
            await self.invoicer.stop()
        if self.services is not None:
            alerts = self.services.part(Alerting)
            if alerts is not None:
                await alerts.stop()
            if self.services.emitter is not None:
                await self.services.emitter.close()
            await self.services.counters.stop()
        if self.store is not None:
            await self.store.stop()
        if self.broker is not None and self._own_broker:
            await self.broker.__aexit__()
        log.info("tally stopped: batches in flight drained, store closed")
