"""A task an API process runs beside its requests, started and stopped with it."""

from __future__ import annotations

import asyncio
import contextlib


class Background:
    """`start()` runs `_run()` as a task named `name`; `stop()` cancels it and waits."""

    name = "tally-background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
