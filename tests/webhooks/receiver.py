"""A webhook receiver on 127.0.0.1 for the tests: it records each request and answers from a script."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next status of `script` (then `then`); a 3xx points at `redirect_to`."""

    daemon_threads = True

    def __init__(self, script: list[int] | None = None, then: int = 200, redirect_to: str = "") -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script, self.then, self.redirect_to = list(script or []), then, redirect_to
        self.received: list[Received] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"

    def next_status(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else self.then


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        status = self.server.next_status()
        with self.server.lock:
            self.server.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("location", self.server.redirect_to or "/elsewhere")
        answer = b"ok" if status < 300 else f"receiver said {status}".encode()
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args) -> None:  # quiet
        pass


def serve(receiver: Receiver) -> threading.Thread:
    thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread
