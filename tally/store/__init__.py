"""The analytics store: one interface over ClickHouse, two transports.

`chdb:///dir` opens the embedded engine (chDB) in this process; `http(s)://...` talks to a
ClickHouse server. Both go through clickhouse-connect, so the SQL, the bound parameters and
the results are the same. Calls run in a thread so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import pyarrow as pa

from tally import failpoints, metrics
from tally.store.backfills import BACKFILLS


class StoreError(RuntimeError):
    """The store could not be opened or a statement failed."""


def redact(url: str) -> str:
    """The store URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None
        # The embedded engine is driven from one thread at a time; a server takes many.
        self._lock = threading.Lock() if url.startswith("chdb://") else None

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb://")

    async def start(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._connect)
            await self.migrate()

    def _connect(self) -> Any:
        try:
            if self.embedded:
                from pathlib import Path

                # `chdb:///dir?database=name` opens another database of the same engine.
                path = self.url.removeprefix("chdb://").split("?", 1)[0]
                Path(path).mkdir(parents=True, exist_ok=True)
                return clickhouse_connect.get_client(dsn=self.url)
            return clickhouse_connect.get_client(dsn=self.url, compress=False)
        except Exception as exc:
            # The driver's message may quote the URL: keep the password out of it.
            detail = str(exc).replace(self.url, redact(self.url))
            raise StoreError(f"cannot open the store at {redact(self.url)}: {detail}") from exc

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise StoreError("the store is not started")
        if self._lock is None:
            return getattr(self._client, method)(*args, **kwargs)
        with self._lock:
            return getattr(self._client, method)(*args, **kwargs)

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self._call, "command", sql, parameters=params)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        result = await asyncio.to_thread(self._call, "query", sql, parameters=params)
        return list(result.result_rows)

    async def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
    ) -> None:
        started = time.perf_counter()
        try:
            failpoints.hit("store.insert")
            if rows:
                await asyncio.to_thread(
                    self._call, "insert", table, rows, column_names=list(columns), settings=settings
                )
        except Exception:
            metrics.store_errors.labels("insert").inc()
            raise
        if rows:
            metrics.insert_seconds.labels(table).observe(time.perf_counter() - started)

    async def insert_arrow(
        self, table: str, data: pa.Table, settings: dict[str, Any] | None = None
    ) -> None:
        """Insert a block of columns: the fastest path into chDB and a server alike."""
        started = time.perf_counter()
        try:
            failpoints.hit("store.insert")
            if data.num_rows:
                await asyncio.to_thread(self._call, "insert_arrow", table, data, settings=settings)
        except Exception:
            metrics.store_errors.labels("insert").inc()
            raise
        if data.num_rows:
            metrics.insert_seconds.labels(table).observe(time.perf_counter() - started)

    async def ping(self) -> bool:
        try:
            return bool(await self.query("SELECT 1"))
        except Exception:
            return False

    async def migrate(self) -> list[str]:
        """Apply every migration not yet recorded; safe to run at every start-up."""
        await self.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime "
            "DEFAULT now()) ENGINE = MergeTree ORDER BY name"
        )
        done = {row[0] for row in await self.query("SELECT name FROM schema_migrations")}
        applied = []
        for name, statements in migrations():
            if name in done:
                continue
            for statement in statements:
                await self.command(statement)
            backfill = BACKFILLS.get(name)
            if backfill is not None:
                await backfill(self)
            await self.insert("schema_migrations", [[name]], ["name"])
            applied.append(name)
        return applied


def migrations() -> list[tuple[str, list[str]]]:
    """The versioned DDL files, in order, each split into statements."""
    folder = resources.files("tally.store") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    out = []
    for path in files:
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        out.append((path.name, [s.strip() for s in text.split(";") if s.strip()]))
    return out
