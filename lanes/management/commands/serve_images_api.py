"""A local stand-in for a hosted image API, for demos on a machine without network.

It speaks the OpenAI Images API (`POST .../images/generations`, answering base64 PNG) and
renders a poster: the prompt's quoted text (or the prompt), as large as fits, on a plain
background, so that the typography verifier can read what a brief asked for.
"""

from __future__ import annotations

import base64
import io
import json
import re
import textwrap
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import Image, ImageDraw, ImageFont

from lanes import typeset
from lanes.verification import expected_texts

SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_REQUEST_BYTES = 1024 * 1024
POSTER_TEXT_CHARS = 200


@dataclass
class ImageRequest:
    prompt: str
    width: int
    height: int
    body: dict[str, Any]


def poster(prompt: str, width: int, height: int) -> Image.Image:
    """The prompt's quoted text (or the prompt itself), wrapped and as large as fits, on a plain background."""
    quoted = expected_texts("", prompt)
    text = " ".join(" ".join(quoted or [prompt]).split())[:POSTER_TEXT_CHARS]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font_size = max(10, height // 3)
    while True:
        per_line = max(1, int(width * 0.9 / (font_size * 0.6)))  # characters of a usual width; measured below
        wrapped = "\n".join(textwrap.wrap(text, per_line, break_long_words=False))
        font = ImageFont.load_default(size=font_size)
        left, top, right, bottom = measure.multiline_textbbox((0, 0), wrapped, font=font)
        if (right - left <= width * 0.9 and bottom - top <= height * 0.9) or font_size <= 10:
            return typeset.render(wrapped, size=(width, height), font_size=font_size)
        font_size = max(10, int(font_size * 0.85))


class ImagesAPIHandler(BaseHTTPRequestHandler):
    """POST .../images/generations: one image at the asked size, in the OpenAI answer shape.

    Any non-empty bearer key is accepted. Subclasses (the tests' scripted server) override `answer`."""

    protocol_version = "HTTP/1.1"
    server_version = "laneway-images-api"

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:  # the client gave up waiting (a timeout) or stopped reading: nobody to answer
            pass

    def do_POST(self) -> None:
        request = self.read_request()
        if request is not None:
            self.answer(request)

    def answer(self, request: ImageRequest) -> None:
        self.send_image(self.render(request))

    def render(self, request: ImageRequest) -> Image.Image:
        return poster(request.prompt, request.width, request.height)

    def read_request(self) -> ImageRequest | None:
        """The request, once its path, key and body check out; otherwise the error is sent and None returned."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
            self.close_connection = True  # the unread body must not be taken for the next request
            self.send_error_json(413, f"Send a JSON body of at most {MAX_REQUEST_BYTES} bytes with a Content-Length.")
            return None
        raw = self.rfile.read(int(length))
        if not urlsplit(self.path).path.rstrip("/").endswith("/images/generations"):
            self.send_error_json(404, f"Unknown path {self.path}: POST .../images/generations.")
            return None
        authorization = self.headers.get("Authorization", "")
        if not authorization.startswith("Bearer ") or not authorization.removeprefix("Bearer ").strip():
            self.send_error_json(401, "You didn't provide an API key (Authorization: Bearer <key>).", code="no_key")
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_error_json(400, "The body is not JSON.")
            return None
        if not isinstance(body, dict):
            self.send_error_json(400, "The body must be a JSON object.")
            return None
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            self.send_error_json(400, "A non-empty prompt is required.", param="prompt")
            return None
        if body.get("n", 1) != 1 or body.get("response_format", "b64_json") != "b64_json":
            self.send_error_json(400, "This API renders one image per request, as b64_json.", param="n")
            return None
        match = SIZE.fullmatch(str(body.get("size", "1024x1024")))
        width, height = (int(match[1]), int(match[2])) if match else (0, 0)
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            self.send_error_json(
                400, f"Invalid size {body.get('size')!r}: WIDTHxHEIGHT, each {MIN_SIDE} to {MAX_SIDE}.", param="size"
            )
            return None
        return ImageRequest(prompt=prompt, width=width, height=height, body=body)

    def send_image(self, image: Image.Image) -> None:
        png = io.BytesIO()
        image.save(png, format="PNG")
        encoded = base64.b64encode(png.getvalue()).decode()
        self.send_json(200, {"created": int(time.time()), "data": [{"b64_json": encoded}]})

    def send_error_json(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        self.send_json(status, {"error": error})

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(payload).encode(), headers)

    def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Command(BaseCommand):
    help = (
        "Serve a stand-in for a hosted image API (OpenAI Images protocol) that renders the prompt's quoted "
        "text as a poster; for demos without network."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--port", type=int, default=urlsplit(settings.DEMO_IMAGES_API_URL).port or 8765,
            help="Default: the port of DEMO_IMAGES_API_URL.",
        )  # fmt: skip

    def handle(self, host: str, port: int, **options) -> None:
        try:
            server = ThreadingHTTPServer((host, port), ImagesAPIHandler)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc}") from None
        self.stdout.write(f"Images API stand-in: POST http://{host}:{server.server_port}/v1/images/generations")
        self.stdout.flush()  # under honcho stdout is a pipe: say it is up now, not at exit
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
