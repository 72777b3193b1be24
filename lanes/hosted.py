"""Hosted engines: image-generation APIs that render a lane's jobs instead of a local GPU.

A hosted version speaks the OpenAI Images API: one `POST {base_url}/images/generations` per
job, authorized with the key in the environment variable the version names (the key itself
is never stored, logged or put in a message). Rate limits (429), server errors (5xx),
timeouts and dropped connections are retried with exponential backoff, honouring
Retry-After; any other refusal fails the job at once with the API's own message. The answer
is untrusted: its size is capped while it streams in, and it must hold base64 that decodes
to a real image of bounded size. At most `max_concurrency` requests of a version are in
flight in one worker process.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from PIL import Image

from .engines import LoraRef, RunResult
from .models import ModelVersion

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
RETRY_AFTER_MAX_SECONDS = 60.0
MAX_BODY_BYTES = 32 * 1024 * 1024  # a base64 PNG at the largest sizes APIs render fits with room
ERROR_BODY_BYTES = 64 * 1024  # an error body is read this far for its message
MAX_SIDE = 4096
MESSAGE_CHARS = 300
# A bearer token is visible ASCII: anything else would be refused by the HTTP library with the
# header, key included, in its message.
USABLE_KEY = re.compile(r"[\x21-\x7e]+")


class HostedError(Exception):
    """A hosted engine that cannot render a job: unset key, refused request, unusable answer."""


class _Retry(Exception):
    """An attempt worth repeating: why it failed, and the delay the server asked for (if it did)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class HostedEngine:
    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        self.url = f"{version.base_url.rstrip('/')}/images/generations"

    def run(
        self,
        *,
        prompt: str,
        seed: int,
        width: int,
        height: int,
        steps: int,
        guidance: float,
        on_step: Callable[[int], None] | None = None,
        adapters: Sequence[LoraRef] = (),
    ) -> RunResult:
        """Render one image. The protocol has no seed, steps or guidance: they are not sent."""
        if adapters:
            raise HostedError(f"{self.version.name} is a hosted engine; hosted engines take no LoRA adapters.")
        started = time.perf_counter()
        key = api_key(self.version)
        body = {
            "model": self.version.remote_model,
            "prompt": prompt,
            "n": 1,
            "size": f"{width}x{height}",
            "response_format": "b64_json",
        }
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                answer = self._post(body, key)
                break
            except _Retry as retry:
                if attempt == MAX_ATTEMPTS:
                    raise HostedError(
                        f"{self.url} failed {MAX_ATTEMPTS} times; the last attempt: {retry.reason}"
                    ) from None
                delay = backoff(attempt, retry.retry_after)
                log.warning(
                    "hosted engine %s: %s; retrying in %.2fs (attempt %s of %s)",
                    self.version.name, retry.reason, delay, attempt + 1, MAX_ATTEMPTS,
                )  # fmt: skip
                time.sleep(delay)
        image = self._image_from(answer)
        if on_step is not None:  # no progress comes over this protocol: all steps are done at once
            on_step(steps)
        return RunResult(
            images=[image],
            run_seconds=time.perf_counter() - started,
            gpu_seconds=0.0,
            peak_memory_bytes=0,
            api_cost=self.version.price_per_image,
        )

    def _post(self, body: dict, key: str) -> bytes:
        """One attempt: the body of a 200 answer, else _Retry (worth another attempt) or HostedError."""
        timeout = self.version.timeout_seconds
        deadline = time.monotonic() + timeout  # the whole attempt, not each read, is bounded
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        try:
            with client().stream("POST", self.url, json=body, headers=headers, timeout=timeout) as response:
                if response.status_code == 200:
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                        raise self._too_large(f" (it declared {int(declared):,})")
                    answer = read_capped(response, MAX_BODY_BYTES, deadline)
                    if len(answer) > MAX_BODY_BYTES:
                        raise self._too_large(" (reading stopped there)")
                    return answer
                # Some servers echo the request: the key must not reach a job's error, which users see.
                detail = error_detail(read_capped(response, ERROR_BODY_BYTES, deadline)).replace(key, "[API key]")
        except httpx.TimeoutException:
            raise _Retry(f"no answer within {timeout:g}s") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise HostedError(f"{self.url} cannot be asked: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        reason = f"HTTP {status} {response.reason_phrase}".rstrip() + (f": {detail}" if detail else "")
        if status == 429 or status >= 500:
            raise _Retry(reason, retry_after(response.headers))
        hint = f" (check the API key in {self.version.api_key_env})" if status in (401, 403) else ""
        raise HostedError(f"{self.url} answered {reason}{hint}")

    def _too_large(self, how: str) -> HostedError:
        return HostedError(f"{self.url} answered with a body over the {MAX_BODY_BYTES:,} bytes allowed{how}.")

    def _image_from(self, answer: bytes) -> Image.Image:
        """The image in an Images API answer, as RGB; HostedError saying what is wrong with it otherwise."""
        where = f"{self.url} answered HTTP 200, but"
        try:
            payload = json.loads(answer)
        except ValueError:
            raise HostedError(f"{where} its body is not JSON: {clip(repr(answer[:MESSAGE_CHARS]))}") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise HostedError(f'{where} its JSON has no "data" list holding an image: {clip(json.dumps(payload))}')
        encoded = data[0].get("b64_json")
        if not isinstance(encoded, str) or not encoded:
            sent_url = " (it sent a URL: the API must support response_format b64_json)" if "url" in data[0] else ""
            raise HostedError(f'{where} data[0] has no "b64_json" string{sent_url}.')
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HostedError(f"{where} data[0].b64_json is not valid base64 ({exc}).") from None
        try:
            opened = Image.open(io.BytesIO(raw))
        except Exception as exc:  # PIL raises many types for data it cannot identify
            raise HostedError(f"{where} data[0].b64_json is not an image ({type(exc).__name__}: {exc}).") from None
        with opened:
            # Checked on the header, before the pixels are decoded.
            if max(opened.size) > MAX_SIDE:
                width, height = opened.size
                raise HostedError(f"{where} its image is {width}x{height}, over the {MAX_SIDE} pixels allowed a side.")
            try:
                opened.load()
                return opened.convert("RGB")
            except Exception as exc:  # a truncated or corrupt image fails in whichever decoder reads it
                raise HostedError(
                    f"{where} data[0].b64_json is not a readable image ({type(exc).__name__}: {exc})."
                ) from None


def api_key(version: ModelVersion) -> str:
    """The version's API key, read from its environment variable now (never stored)."""
    name = version.api_key_env
    if not name:
        raise HostedError(f"{version.name} names no environment variable holding its API key.")
    key = os.environ.get(name, "").strip()
    if not key:
        raise HostedError(f"The environment variable {name} (the API key of {version.name}) is not set on this worker.")
    if not USABLE_KEY.fullmatch(key):
        raise HostedError(f"The environment variable {name} does not hold a usable API key (spaces or non-ASCII).")
    return key


def read_capped(response: httpx.Response, limit: int, deadline: float) -> bytes:
    """The body, or its first limit+1 bytes when it is longer (reading stops there)."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            break
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took longer than the timeout")
    return bytes(body[: limit + 1])


def error_detail(body: bytes) -> str:
    """The message of an error answer: OpenAI's {"error": {"message": ...}}, else the body's text."""
    text = body.decode("utf-8", "replace")
    try:
        payload = json.loads(body)
    except ValueError:
        pass
    else:
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message.strip():
            text = message
    return clip(" ".join(text.split()))


def clip(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), capped at RETRY_AFTER_MAX_SECONDS; None if absent."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def backoff(attempt: int, asked: float | None = None) -> float:
    """The pause after a failed attempt (1-based): what the server asked for, else exponential."""
    if asked is not None:
        return asked
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    """This process's HTTP client: thread-safe, one connection pool for every hosted version."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(headers={"User-Agent": "laneway"})
        return _client


class Gate:
    """The requests of one version in flight in this process: at most the limit given at each entry,
    so a changed max_concurrency applies to the next job without a restart."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.in_flight = 0

    @contextmanager
    def hold(self, limit: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight < max(limit, 1))
            self.in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()


_gates: dict[int | None, Gate] = {}
_gates_lock = threading.Lock()


def gate(version: ModelVersion) -> Gate:
    with _gates_lock:
        return _gates.setdefault(version.pk, Gate())


@contextmanager
def use(version: ModelVersion) -> Iterator[HostedEngine]:
    """The version's engine, once one of its `max_concurrency` places in this process is free."""
    with gate(version).hold(version.max_concurrency):
        yield HostedEngine(version)
