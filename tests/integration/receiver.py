"""A real webhook receiver on loopback: records every request, fails the first few."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """`fail_first` requests answer 503, the rest 204."""

    fail_first: int = 0
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 503 if len(receiver.requests) < receiver.fail_first else 204
                receiver.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body, status)
                )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def delivered(self, secret: str) -> dict[str, dict[str, Any]]:
        """Each message the receiver accepted, by `webhook-id`, verified with the reference
        library (`standardwebhooks`): a bad signature raises."""
        out = {}
        for r in self.requests:
            if r.status < 300:
                payload = Webhook(secret).verify(r.body, r.headers)
                out[r.headers["webhook-id"]] = payload
        return out

    def ids(self) -> set[str]:
        return {r.headers["webhook-id"] for r in self.requests}
