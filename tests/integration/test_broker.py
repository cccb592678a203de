"""The embedded broker: it answers Kafka requests, stops cleanly, and never outlives Tally."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from tally.broker import EmbeddedBroker, _answers_kafka, free_port


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
    deadline = time.monotonic() + 10
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(port), "the broker outlived the process that started it"
