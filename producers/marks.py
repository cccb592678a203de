"""Follows `usage.stored`, the workers' stored marks (`schemas.marks`), for an emitter.

It reads from the end of the topic: the workers publish their marks after every insert and
every half second, so the next one comes soon, and only the latest matters. It waits out a
broker that is away or a topic that does not exist yet, and never stops on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.marks import STORED_TOPIC, StoredMarks, decode_marks

log = logging.getLogger("tally.emitter")

RETRY_S = 0.5


class MarksReader:
    """Calls `on_marks` with every stored mark published from now on; `start()` / `stop()`."""

    def __init__(
        self,
        bootstrap_servers: str,
        on_marks: Callable[[StoredMarks], None],
        client_id: str = "tally-emitter-marks",
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.on_marks = on_marks
        self.client_id = client_id
        self.received = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tally-emitter-marks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                fetch_max_wait_ms=200,
            )
            try:
                await consumer.start()
                while STORED_TOPIC not in await consumer.topics():  # noqa: ASYNC110
                    await asyncio.sleep(RETRY_S)  # the broker is polled: no event to wait on
                consumer.assign(
                    [TopicPartition(STORED_TOPIC, p) for p in self._partitions(consumer)]
                )
                while True:
                    fetched = await consumer.getmany(timeout_ms=1_000)
                    for messages in fetched.values():
                        for message in messages:
                            marks = decode_marks(message.value)
                            if marks is not None:
                                self.received += 1
                                self.on_marks(marks)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: follow it again when it is back
                log.debug("stored marks: %r; reading again in %.1fs", exc, RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)
            await asyncio.sleep(RETRY_S)

    @staticmethod
    def _partitions(consumer: AIOKafkaConsumer) -> list[int]:
        return sorted(consumer.partitions_for_topic(STORED_TOPIC) or {0})
