"""`SyncEmitter`: the emitter for runtimes that are not asyncio (threads, plain scripts).

    with SyncEmitter("kafka:9092", spool_dir="/var/lib/agent/tally-spool") as tally:
        tally.tool_call(org_id="acme", agent_id="a1", connector="github",
                        tool="create_issue", success=True)

It runs an `Emitter` on an event loop in a background thread. The typed helpers build and
buffer the event in the calling thread (the emitter's buffer is guarded by a lock), so a
call costs the same few microseconds as with the async emitter and never waits for the
broker; any number of threads may call them at once. `flush()` and `close()` block the
caller until the background loop has done them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from producers.emitter import Emitter, EmitterStats

T = TypeVar("T")


class SyncEmitter:
    """A thread-safe, blocking facade over `Emitter`; same arguments, same helpers."""

    def __init__(self, bootstrap_servers: str, *, spool_dir: str | Path, **options: Any) -> None:
        self._args = (bootstrap_servers,)
        self._options = {"spool_dir": spool_dir, **options}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emitter: Emitter | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the background loop and the emitter (returns with the broker down too)."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tally-emitter", daemon=True)
        self._thread.start()

        async def make() -> Emitter:
            emitter = Emitter(*self._args, **self._options)
            await emitter.start()
            return emitter

        try:
            self._emitter = self._run(make(), timeout)
        except BaseException:
            self._stop_loop()
            raise

    def close(self, timeout: float | None = None) -> None:
        """As `Emitter.close`: wait for storage (up to `close_timeout_s`), keep on disk what
        is not confirmed, stop the emitter and the background thread."""
        if self._thread is None:
            return
        try:
            if self._emitter is not None:
                self._run(self._emitter.close(), timeout)
        finally:
            self._emitter = None
            self._stop_loop()

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything emitted so far is delivered or durably spooled."""
        self._run(self._started.flush(), timeout)

    def wait_delivered(self, timeout: float) -> bool:
        """Block until nothing is left in memory or on disk; False after `timeout`."""
        return self._run(self._started.wait_delivered(timeout), timeout + 5)

    def wait_stored(self, timeout: float) -> bool:
        """Block until Tally has stored everything emitted; False after `timeout`."""
        return self._run(self._started.wait_stored(timeout), timeout + 5)

    def stats(self) -> EmitterStats:
        return self._started.stats()

    def __enter__(self) -> SyncEmitter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The helpers run in the calling thread: Emitter's buffer is guarded by a lock.

    def llm_usage(self, **fields: Any) -> str:
        """See `Emitter.llm_usage`."""
        return self._started.llm_usage(**fields)

    def tool_call(self, **fields: Any) -> str:
        """See `Emitter.tool_call`."""
        return self._started.tool_call(**fields)

    def gateway_request(self, **fields: Any) -> str:
        """See `Emitter.gateway_request`."""
        return self._started.gateway_request(**fields)

    def session_started(self, **fields: Any) -> str:
        """See `Emitter.session_started`."""
        return self._started.session_started(**fields)

    def session_heartbeat(self, **fields: Any) -> str:
        """See `Emitter.session_heartbeat`."""
        return self._started.session_heartbeat(**fields)

    def session_ended(self, **fields: Any) -> str:
        """See `Emitter.session_ended`."""
        return self._started.session_ended(**fields)

    def storage_usage(self, **fields: Any) -> str:
        """See `Emitter.storage_usage`."""
        return self._started.storage_usage(**fields)

    def emit(self, event: Mapping[str, Any]) -> str:
        """See `Emitter.emit`."""
        return self._started.emit(event)

    @property
    def _started(self) -> Emitter:
        if self._emitter is None:
            raise RuntimeError("start the emitter first: `with SyncEmitter(...)` or start()")
        return self._emitter

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
