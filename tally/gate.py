"""A gate in front of an embedded broker: its port opens once Tally's topics exist.

An embedded broker (Tansu) makes a topic the moment a client produces to it or asks about
it, with its own defaults (4 partitions), and gives offsets again when the topic is then
created properly: a producer that had batches in flight when a separate `tally broker`
restarted empty would write to a log that is then rewritten. So `tally broker` runs the
broker on an internal port, advertising the public one; creates the topics over a direct
connection to the internal port; and only then opens the public port, here, relaying each
connection to the broker. Until then clients find the port closed, as if the broker were
still down, and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger("tally.gate")

CHUNK = 1 << 16


async def create_topics_direct(port: int, topics: list[NewTopic], timeout: float = 30.0) -> None:
    """Create the missing `topics` over one connection to a broker on 127.0.0.1:`port`,
    asking without ever letting the broker make one by itself (no metadata-driven client,
    whose address book would point at the public port)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            conn = await create_conn("127.0.0.1", port, request_timeout_ms=10_000)
            break
        except Exception:  # the broker is starting
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
    try:
        names = [t.name for t in topics]
        metadata = await conn.send(MetadataRequest(names, allow_auto_topic_creation=False))
        existing = {t[1] for t in metadata.topics if t[0] == 0}
        missing = [t for t in topics if t.name not in existing]
        if missing:
            request = CreateTopicsRequest(
                create_topic_requests=[
                    AIOKafkaAdminClient._convert_new_topic_request(t) for t in missing
                ],
                timeout=10_000,
                validate_only=False,
            )
            response = await conn.send(request)
            failed = [(t[0], t[1]) for t in response.topic_errors if t[1] not in (0, 36)]
            if failed:  # 36: already exists
                raise RuntimeError(f"could not create topics {failed}")
            log.info("created topics %s", [t.name for t in missing])
    finally:
        conn.close()


class Gate:
    """Relays connections on 127.0.0.1:`port` to the broker on 127.0.0.1:`target`."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
