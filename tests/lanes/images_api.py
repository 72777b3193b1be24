"""A scripted image API on 127.0.0.1 for the hosted engine's tests: the demo server's handler
(lanes/management/commands/serve_images_api.py) with failure modes a test switches on.

`server.script` lists what the next requests get, one entry each; the last entry repeats.
Every request that passes the handler's checks is recorded (headers, JSON, time).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, TypeVar

from PIL import Image

from lanes import hosted, registry
from lanes.management.commands.serve_images_api import ImageRequest, ImagesAPIHandler

BEHAVIOURS = (
    "ok",  # a PNG of the asked size, in a solid colour derived from the prompt
    "slow",  # sleeps `slow_seconds` before answering ok
    "429",  # rate limited, Retry-After: `retry_after`
    "500",
    "401",  # an OpenAI-style error body
    "malformed-json",
    "no-data",
    "url-instead",  # data[0] holds a "url", not "b64_json"
    "bad-base64",
    "not-an-image",
    "huge-image",  # a real PNG, 5000 pixels wide
    "oversized",  # a body past `oversized_bytes`, with its Content-Length
    "oversized-undeclared",  # the same without a Content-Length (until the connection closes)
)


def prompt_colour(prompt: str) -> tuple[int, int, int]:
    r, g, b = hashlib.sha256(prompt.encode()).digest()[:3]
    return (r, g, b)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class ScriptedHandler(ImagesAPIHandler):
    server: ImagesAPI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def render(self, request: ImageRequest) -> Image.Image:
        return Image.new("RGB", (request.width, request.height), prompt_colour(request.prompt))

    def answer(self, request: ImageRequest) -> None:
        server = self.server
        behaviour = server.record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, request.body))
        try:
            self.behave(behaviour, request)
        finally:
            server.leave()

    def behave(self, behaviour: str, request: ImageRequest) -> None:
        server = self.server
        if behaviour == "slow":
            if server.stopping.wait(server.slow_seconds):
                return
            behaviour = "ok"
        if behaviour == "ok":
            if server.delay_seconds:
                time.sleep(server.delay_seconds)
            super().answer(request)
        elif behaviour == "429":
            message = {"error": {"message": "Rate limit reached for images per minute.", "type": "requests"}}
            self.send_json(429, message, {"Retry-After": server.retry_after})
        elif behaviour == "500":
            self.send_json(500, {"error": {"message": "The server had an error processing your request."}})
        elif behaviour == "401":
            message = "Incorrect API key provided: sk-wr***ng. You can find your API key at https://example.invalid."
            self.send_json(401, {"error": {"message": message, "type": "invalid_request_error", "code": "x"}})
        elif behaviour == "malformed-json":
            self.send_body(200, b'{"created": 1, "data": [{"b64_json": "iVBOR')
        elif behaviour == "no-data":
            self.send_json(200, {"created": 1, "images": []})
        elif behaviour == "url-instead":
            self.send_json(200, {"created": 1, "data": [{"url": "https://example.invalid/image.png"}]})
        elif behaviour == "bad-base64":
            self.send_json(200, {"created": 1, "data": [{"b64_json": "this is not base64!"}]})
        elif behaviour == "not-an-image":
            encoded = base64.b64encode(b"<html><body>Service temporarily unavailable</body></html>").decode()
            self.send_json(200, {"created": 1, "data": [{"b64_json": encoded}]})
        elif behaviour == "huge-image":
            self.send_image(Image.new("RGB", (5000, 8), (0, 0, 0)))
        elif behaviour == "oversized":
            self.send_body(200, b" " * server.oversized_bytes)
        elif behaviour == "oversized-undeclared":
            self.close_connection = True  # the body ends when the connection does
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(server.oversized_bytes // 8192):
                self.wfile.write(b" " * 8192)
        else:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {BEHAVIOURS}")


class ImagesAPI(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script: list[str] = ["ok"]
        self.received: list[Received] = []
        self.slow_seconds = 5.0
        self.delay_seconds = 0.0
        self.retry_after = "0"
        self.oversized_bytes = 256 * 1024
        self.in_flight = self.peak_in_flight = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"

    def play(self, *behaviours: str) -> None:
        unknown = set(behaviours) - set(BEHAVIOURS)
        assert behaviours and not unknown, f"unknown behaviours {unknown}"
        with self._lock:
            self.script = list(behaviours)

    def record(self, request: Received) -> str:
        """Note a request and that it is in flight; what it gets."""
        with self._lock:
            self.received.append(request)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


S = TypeVar("S", bound=ThreadingHTTPServer)


@contextmanager
def serving(server: S) -> Iterator[S]:
    """The server answering on its port in a thread, until the block ends."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if isinstance(server, ImagesAPI):
            server.stopping.set()  # sleeping "slow" answers end now
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


KEY_ENV = "LANEWAY_TEST_IMAGES_KEY"
KEY = "sk-test-0123456789"
PRICE = 0.04


def register(base_url: str, name: str = "images-api-v1", **fields):
    """A hosted version on the scripted API (staged unless `validate`)."""
    return registry.register_version(
        None, name=name, family="http", base_url=base_url, remote_model="test-image-1", api_key_env=KEY_ENV,
        timeout_seconds=fields.pop("timeout_seconds", 5.0), max_concurrency=fields.pop("max_concurrency", 4),
        price_per_image=PRICE, validate=fields.pop("validate", False),
    )  # fmt: skip


def render(version, prompt: str = "A red kite over the harbour", **kwargs):
    args = dict(prompt=prompt, seed=5, width=320, height=192, steps=1, guidance=0.0) | kwargs
    with hosted.use(version) as engine:
        return engine.run(**args)
