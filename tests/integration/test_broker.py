"""The embedded broker: it answers Kafka requests, stops cleanly, and never outlives Tally."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from tally.broker import EmbeddedBroker, _answers_kafka, find_broker_bin, free_port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_start_answers_kafka_and_stop_frees_the_port():
    with EmbeddedBroker() as broker:
        assert _answers_kafka(broker.port)
    assert not port_open(broker.port)


def test_a_broker_dies_with_the_process_that_started_it():
    port = free_port()
    code = (
        "from tally.broker import EmbeddedBroker\n"
        f"EmbeddedBroker({port}).start()\n"
        "print('up', flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdout.readline() == b"up\n"
    assert port_open(port)
    parent.send_signal(signal.SIGKILL)  # no chance to stop its broker
    parent.wait()
    # At once: a broker that lingers acknowledges events that then die with it (it took
    # about 5 s on SIGTERM), and holds the port an immediate restart needs.
    deadline = time.monotonic() + 1.0
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not port_open(port), "the broker outlived the process that started it"


def test_a_start_ends_a_broker_of_ours_left_behind_and_takes_its_port(tmp_path):
    port, pidfile = free_port(), tmp_path / "broker.pid"
    url = f"tcp://127.0.0.1:{port}"
    leftover = subprocess.Popen(  # as a crash on a system without the parent-death signal
        [
            str(find_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        pidfile.write_text(f"{leftover.pid}\n")
        with EmbeddedBroker(port, pidfile=pidfile) as broker:
            assert leftover.wait(timeout=5) == -signal.SIGKILL
            assert _answers_kafka(port) and broker.cluster_id.startswith("tally-embedded-")
            assert pidfile.read_text().strip() == str(broker.pid)
        assert not pidfile.exists()
    finally:
        leftover.kill()


def test_each_start_is_a_new_cluster_id():
    with EmbeddedBroker() as a:
        first = a.cluster_id
    with EmbeddedBroker(a.port) as b:
        assert b.cluster_id != first


async def test_no_other_worker_joins_the_broker_of_a_tally_up(tmp_path):
    """A `tally up`'s worker reads every partition of its own broker without a group: a
    worker joining a group there would read them too, so it refuses, saying why."""
    import pytest

    from streams.sink import ClickHouseSink
    from streams.worker import Worker
    from tally.catalogue import load_prices
    from tally.config import Settings
    from tally.store import Store
    from tally.topics import ensure_topics

    with EmbeddedBroker(sole=True) as broker:
        await ensure_topics(broker.bootstrap_servers, 2)
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, partitions=2)
        store = Store(f"chdb:///{tmp_path}/chdb")  # never opened: the refusal comes first
        worker = Worker(settings, ClickHouseSink(store, "e", 60), load_prices())
        with pytest.raises(RuntimeError, match="belongs to a `tally up`"):
            await worker.start()
        await worker.stop()


async def test_tally_broker_opens_its_port_only_with_tallys_topics_made(tmp_path):
    """`tally broker`: a client's first request finds Tally's topics with their partition
    counts, never one the broker would make on the fly with its own defaults."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the test talks to it
        [sys.executable, "-m", "commands.cli", "broker", "--port", str(port), "--partitions", "6"],
        stdout=subprocess.PIPE,
    )
    try:
        # A producer that keeps knocking from the start, as one coming back after a restart.
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                await producer.start()
                break
            except Exception:
                assert time.monotonic() < deadline, "the broker never opened its port"
                await asyncio.sleep(0.01)
        try:
            assert len(await producer.partitions_for("usage.events")) == 6
            assert len(await producer.partitions_for("usage.counters")) == 6
            sent = await producer.send_and_wait("usage.events", b"x", key=b"org")
            assert sent.offset == 0
        finally:
            await producer.stop()
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().startswith(f"broker on 127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
