"""Session fixtures: one real embedded broker and one chDB-backed Tally for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from api.app import create_app
from commands.runtime import Tally
from tally.broker import EmbeddedBroker
from tally.config import EVENTS_TOPIC, Settings
from tests.factories import wire

ADMIN_KEY = "test-admin-key-0123456789"

# A test still running after WATCHDOG_S prints where its asyncio tasks wait and the log so
# far; pytest-timeout (`timeout` in pyproject.toml, later) then ends the run, so a hang fails
# with that evidence instead of running into CI's limit.
WATCHDOG_S = 240
_running: dict[str, Any] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _running.update(item=item, since=time.monotonic())
    try:
        return (yield)
    finally:
        _running.clear()


def _report_hang(item: pytest.Item) -> None:
    out = sys.stderr
    print(f"\n{item.nodeid} has run for {WATCHDOG_S}s. Its asyncio tasks:", file=out)
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=out)
    logging_plugin = item.config.pluginmanager.get_plugin("logging-plugin")
    if logging_plugin is not None:
        lines = logging_plugin.report_handler.stream.getvalue().splitlines()
        print(f"The test's log (its last {min(len(lines), 300)} lines):", file=out)
        print("\n".join(lines[-300:]), file=out, flush=True)


@pytest_asyncio.fixture(scope="session", autouse=True)
async def watchdog() -> AsyncIterator[None]:
    async def watch() -> None:
        reported = None
        while True:
            await asyncio.sleep(5)
            item, since = _running.get("item"), _running.get("since", 0.0)
            if item is not None and item is not reported and time.monotonic() - since > WATCHDOG_S:
                reported = item
                _report_hang(item)

    task = asyncio.create_task(watch())
    yield
    task.cancel()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns a truthy value; fail with its last value on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tally-data")


@pytest.fixture(scope="session")
def settings(broker: EmbeddedBroker, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        bootstrap_servers=broker.bootstrap_servers,
        admin_key=ADMIN_KEY,
        log_epoch=f"test-{uuid.uuid4().hex}",
        batch_timeout_ms=20,
    )


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Tally]:
    """Worker and API in one process, as `tally up` runs them, once both are ready."""
    tally = Tally(settings)
    try:
        await tally.start()
        await tally.start_worker()
        assert tally.worker is not None and tally.services is not None
        await asyncio.wait_for(tally.worker.ready.wait(), 60)
        await asyncio.wait_for(tally.services.counters.ready.wait(), 60)
        yield tally
    finally:
        await tally.stop()


@pytest_asyncio.fixture(scope="session")
async def stack(settings: Settings) -> AsyncIterator[Tally]:
    async with running(settings) as tally:
        yield tally


@pytest_asyncio.fixture(scope="session")
async def client(stack: Tally) -> AsyncIterator[httpx.AsyncClient]:
    assert stack.services is not None
    app = create_app(stack.services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as c:
        yield c


@pytest_asyncio.fixture(scope="session")
async def producer(stack: Tally) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.settings.bootstrap_servers, acks="all")
    await p.start()
    yield p
    await p.stop()


OrgFactory = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture
def new_org(client: httpx.AsyncClient) -> OrgFactory:
    """Create an org with a fresh id and a key; returns `(org_id, key)`."""

    async def create(
        plan: str = "free", signup_date: date | None = None, mode: str = "live"
    ) -> tuple[str, str]:
        org_id = f"org-{uuid.uuid4().hex[:10]}"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        body = {
            "org_id": org_id,
            "plan": plan,
            "signup_date": (signup_date or date(2026, 1, 1)).isoformat(),
        }
        r = await client.post("/api/v2/admin/orgs", json=body, headers=headers)
        assert r.status_code == 201, r.text
        r = await client.post(
            f"/api/v2/admin/orgs/{org_id}/keys", json={"mode": mode}, headers=headers
        )
        assert r.status_code == 201, r.text
        return org_id, r.json()["key"]

    return create


Send = Callable[..., Awaitable[None]]


@pytest.fixture
def send(producer: AIOKafkaProducer) -> Send:
    """Produce events (dicts, or raw bytes with an explicit key) to usage.events."""

    async def _send(*events: dict[str, Any] | bytes, key: bytes | None = None) -> None:
        for e in events:
            if isinstance(e, bytes):
                await producer.send(EVENTS_TOPIC, e, key=key)
            else:
                await producer.send(EVENTS_TOPIC, wire(e), key=e["org_id"].encode())
        await producer.flush()

    return _send


async def stored_rows(stack: Tally, org: str) -> int:
    """How many raw events of `org` are in the store's events table."""
    assert stack.store is not None
    rows = await stack.store.query(
        "SELECT count() FROM events WHERE org_id = {o:String}", {"o": org}
    )
    return int(rows[0][0])


async def rows_reach(stack: Tally, org: str, expected: int, timeout: float = 20) -> None:
    """Wait until `org` has `expected` raw events stored. The quota counters may show events
    before their rows are inserted (the worker publishes counters first), so a test that reads
    the store after a quota figure waits for this too."""

    async def check() -> int | None:
        n = await stored_rows(stack, org)
        assert n <= expected, f"stored {n} events of {org}, more than the {expected} sent"
        return n if n == expected else None

    await eventually(check, timeout=timeout)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
