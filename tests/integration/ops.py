"""Helpers for the operations tests: the session API on a real port, the CLI as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from commands.runtime import Tally
from tally.broker import free_port
from tests.conftest import ADMIN_KEY, eventually


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own handlers
        yield


@contextlib.asynccontextmanager
async def serve(stack: Tally) -> AsyncIterator[str]:
    """The session stack's API on a loopback port, so that CLI processes can reach it."""
    assert stack.services is not None
    port = free_port()
    config = uvicorn.Config(
        create_app(stack.services),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=15)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Run:
    code: int
    out: str
    err: str


async def tally(*args: str, timeout: float = 120, **env: str) -> Run:
    """Run `tally ARGS` in a child process without blocking the session loop (which serves
    the API the child talks to)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands.cli",
        *args,
        env={**os.environ, "TALLY_ADMIN_KEY": ADMIN_KEY, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"tally {' '.join(args)} did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`{(sample name, sorted labels): value}` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)
