"""Sending a delivery: claim it, POST it signed as Standard Webhooks says, record the attempt, schedule the next.

A worker claims an attempt with a conditional UPDATE that also takes a lease (the delivery's
`next_attempt_at` moves past the attempt's longest duration), so two workers never send the same
attempt, and a worker killed mid-attempt leaves a delivery that beat finds due again once the
lease runs out. A 2xx answer succeeds; anything else (a redirect included: they are not followed)
is retried on WEBHOOK_RETRY_SCHEDULE, and fails after the last retry.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import ssl
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import outbox
from .addresses import check_url, pinned_url
from .models import SECRET_PREFIX, Attempt, Delivery, WebhookError

log = logging.getLogger(__name__)

USER_AGENT = "Laneway-Webhooks/1.0"
ERROR_CHARS = 300
# Retries due this soon go to the broker with a countdown; later ones wait for beat's sweep (a
# message held for hours would outlive the broker's visibility timeout and come back anyway).
COUNTDOWN_MAX_SECONDS = 60.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: v1, then the base64 HMAC-SHA256 of id.timestamp.body."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def lease_seconds() -> float:
    # httpx applies the timeout to each phase (connect, write, read): an attempt ends within about three.
    return 3 * settings.WEBHOOK_TIMEOUT_SECONDS + 1


def claim(delivery: Delivery, now: datetime) -> bool:
    """Take the next attempt of a due delivery; False if another worker has it or it is not due."""
    lease = now + timedelta(seconds=lease_seconds())
    claimed = Delivery.objects.filter(
        pk=delivery.pk, state=Delivery.State.PENDING, attempts=delivery.attempts, next_attempt_at__lte=now
    ).update(attempts=F("attempts") + 1, next_attempt_at=lease, queued_at=None)
    if claimed:
        delivery.attempts += 1
        delivery.next_attempt_at = lease
    return bool(claimed)


def deliver(delivery_id: int) -> str:
    """Send one due delivery. Safe to run twice and from several workers: only a claim sends."""
    try:
        delivery = Delivery.objects.select_related("endpoint").get(pk=delivery_id)
    except Delivery.DoesNotExist:
        return "missing"
    if delivery.state != Delivery.State.PENDING:
        return f"skipped: {delivery.state}"
    if not delivery.endpoint.enabled:
        return "skipped: the endpoint is disabled"  # kept pending: sent if it is enabled again
    if not claim(delivery, timezone.now()):
        return "skipped: not due or claimed elsewhere"
    started = time.monotonic()
    status_code, error = post(delivery)
    duration_ms = int((time.monotonic() - started) * 1000)
    return record(delivery, status_code, error, duration_ms)


def post(delivery: Delivery) -> tuple[int | None, str]:
    """POST the delivery; (status code or None, error or '') — never raises for the receiver's faults."""
    endpoint = delivery.endpoint
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": delivery.msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(endpoint.secret, delivery.msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    try:
        target = check_url(endpoint.url)  # again at send time: DNS may have changed since registration
    except WebhookError as exc:
        return None, str(exc)
    # Connect to the address that was checked; the host stays in the Host header and the TLS name.
    headers["host"] = urlsplit(endpoint.url).netloc
    try:
        return asyncio.run(_exchange(pinned_url(target), body, headers, target.host))
    except TimeoutError:
        return None, f"no answer within {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    except httpx.TimeoutException:
        return None, f"no answer within {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context (its CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), built once per process:
    building it loads the whole CA bundle, ~25 ms, which a client made per delivery paid every time."""
    return httpx.create_ssl_context()


async def _exchange(url: str, body: bytes, headers: dict, sni: str) -> tuple[int, str]:
    """One POST, all of it (connect, headers, error text) within WEBHOOK_TIMEOUT_SECONDS: a receiver
    that drips its answer a byte at a time cannot hold a worker past the delivery's lease."""
    async with asyncio.timeout(settings.WEBHOOK_TIMEOUT_SECONDS):
        async with httpx.AsyncClient(
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False, verify=_tls()
        ) as client:
            request = client.build_request("POST", url, content=body, headers=headers, extensions={"sni_hostname": sni})
            response = await client.send(request, stream=True)
            try:
                if response.is_success:
                    return response.status_code, ""
                if response.is_redirect:
                    where = response.headers.get("location", "")
                    return response.status_code, f"redirected to {where}: redirects are not followed"
                answer = b""
                async for chunk in response.aiter_raw(ERROR_CHARS):
                    answer = chunk
                    break
                return response.status_code, answer.decode(errors="replace").strip()
            finally:
                await response.aclose()


def record(delivery: Delivery, status_code: int | None, error: str, duration_ms: int) -> str:
    """Store the attempt and the delivery's next state; the endpoint learns whether it is failing."""
    now = timezone.now()
    succeeded = status_code is not None and 200 <= status_code < 300
    error = error[:ERROR_CHARS]
    endpoint = delivery.endpoint
    with transaction.atomic():
        if succeeded:
            state, next_at, retry_in = Delivery.State.SUCCEEDED, None, None
        elif delivery.attempts >= delivery.max_attempts:
            state, next_at, retry_in = Delivery.State.FAILED, None, None
        else:
            retry_in = settings.WEBHOOK_RETRY_SCHEDULE[min(delivery.attempts, len(settings.WEBHOOK_RETRY_SCHEDULE)) - 1]
            state, next_at = Delivery.State.PENDING, now + timedelta(seconds=retry_in)
        countdown = retry_in is not None and retry_in <= COUNTDOWN_MAX_SECONDS
        # Only the holder of this attempt writes its outcome (a lease that ran out let another take over).
        written = Delivery.objects.filter(
            pk=delivery.pk, state=Delivery.State.PENDING, attempts=delivery.attempts
        ).update(
            state=state,
            next_attempt_at=next_at,
            queued_at=now if countdown else None,
            last_status_code=status_code,
            last_error=error,
            last_duration_ms=duration_ms,
            delivered_at=now if succeeded else None,
        )
        Attempt.objects.create(
            delivery=delivery, number=delivery.attempts, at=now, succeeded=succeeded,
            status_code=status_code, error=error, duration_ms=duration_ms,
        )  # fmt: skip
        if not written:
            return "discarded"
        if succeeded:
            endpoint.mark_succeeded()
        elif endpoint.mark_failing(now):
            log.warning("webhook endpoint %s (%s) disabled: %s", endpoint.pk, endpoint.host, endpoint.disabled_reason)
        if countdown:
            transaction.on_commit(lambda: outbox.send([delivery.pk], countdown=retry_in), robust=True)
    if not succeeded:
        log.info("webhook %s attempt %s to %s failed: %s %s", delivery.msg_id, delivery.attempts, endpoint.host,
                 status_code, error)  # fmt: skip
    return state


def send_due(now: datetime | None = None) -> int:
    """Beat: send every delivery that is due (a retry, or one a lost worker or message left behind)."""
    now = now or timezone.now()
    due = list(Delivery.objects.unsent(now).values_list("pk", flat=True)[:1000])
    Delivery.objects.filter(pk__in=due).update(queued_at=now)
    outbox.send(due)
    return len(due)
