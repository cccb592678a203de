"""Where the server-path tests get their parts: a fresh database or Docker containers.

One process can open one chDB directory, and the session stack already has it open, so a
chDB test that needs a store of its own gets a fresh database in that same engine. Tests
marked `docker` start Kafka and a ClickHouse server with testcontainers, and skip, saying
that Docker is missing, where no Docker engine answers.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from tally.broker import EmbeddedBroker
from tally.store import Store

CLICKHOUSE_IMAGE = os.environ.get(
    "TALLY_TEST_CLICKHOUSE_IMAGE", "clickhouse/clickhouse-server:25.8"
)
KAFKA_IMAGE = os.environ.get("TALLY_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")


@functools.cache
def docker_problem() -> str | None:
    """Why Docker tests cannot run here, or None when a Docker engine answers a ping."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"Docker is missing: no Docker engine answers here ({first_line[:160]})"
    return None


def require_docker() -> None:
    """Skip the calling test or fixture, with the reason, when Docker is not available."""
    problem = docker_problem()
    if problem:
        pytest.skip(problem)  # only ever "Docker is missing: ..."


@contextmanager
def clickhouse_container() -> Iterator[str]:
    """A ClickHouse server in Docker; yields its HTTP URL with credentials and database."""
    require_docker()
    from testcontainers.community.clickhouse import ClickHouseContainer

    with ClickHouseContainer(
        CLICKHOUSE_IMAGE, username="tally", password="tally", dbname="tally"
    ) as server:
        host, port = server.get_container_host_ip(), server.get_exposed_port(8123)
        yield f"http://tally:tally@{host}:{port}/tally"


@contextmanager
def kafka_container() -> Iterator[str]:
    """Apache Kafka in KRaft mode in Docker; yields its bootstrap address."""
    require_docker()
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


def with_database(url: str, database: str) -> str:
    """The same store URL, pointed at another database of the same engine or server."""
    if url.startswith("chdb://"):
        return f"{url.split('?', 1)[0]}?database={database}"
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def fresh_database(admin: Store, prefix: str) -> str:
    """Create an empty database next to `admin`'s and return a store URL for it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await admin.command(f"CREATE DATABASE {name}")  # a generated identifier, never user input
    return with_database(admin.url, name)


async def drop_database(admin: Store, url: str) -> None:
    name = url.rsplit("database=", 1)[-1] if url.startswith("chdb://") else urlsplit(url).path[1:]
    await admin.command(f"DROP DATABASE IF EXISTS {name}")


@dataclass(frozen=True)
class Topology:
    """A broker and a store for Tally processes to share, as the compose services do."""

    bootstrap: str
    admin_url: str  # the store's default database; tests work in a fresh one beside it
    session_timeout_ms: int


# The embedded parts always; Kafka and a ClickHouse server where Docker is.
TOPOLOGIES = ["embedded", pytest.param("containers", marks=pytest.mark.docker)]


@contextmanager
def topology(kind: str, chdb_url: str) -> Iterator[Topology]:
    """`embedded`: a broker of our own (its groups are ours alone) and the session's chDB
    engine at `chdb_url`; `containers`: Kafka and a ClickHouse server in Docker."""
    if kind == "embedded":
        with EmbeddedBroker() as broker:
            yield Topology(broker.bootstrap_servers, chdb_url, 3_000)
    else:
        # Kafka refuses session timeouts under its group.min.session.timeout.ms (6 s).
        with clickhouse_container() as store_url, kafka_container() as bootstrap:
            yield Topology(bootstrap, store_url, 6_000)
