"""`Idempotency-Key` on create requests: the first answer is stored with the change it made, in
the same transaction, and replayed to every repeat within a day; concurrent repeats wait on the
key's unique index and get the same answer, so a retried submit never makes a second job."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import IdempotencyKey

from .core import ProblemError

KEEP_FOR = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def fingerprint(request) -> str:
    """The request's method, path and body; a JSON body as its canonical form (key order and spacing
    are not a different request)."""
    body = request.body
    try:
        body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        pass
    return hashlib.sha256(b"\n".join([request.method.encode(), request.path.encode(), body])).hexdigest()


def once(request, make: Callable[[], tuple[int, dict]], response) -> tuple[int, dict]:
    """(status, body): `make` runs at most once per key, and a replay is marked `Idempotent-Replayed`
    on `response`. Only 2xx answers (and a 503 for a saved job the broker could not take yet) are kept.

    A refusal `make` returns (not raises), such as admission's 429, keeps what it stored (the
    rejected job) and frees the key for a retry; one it raises undoes everything."""
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return make()
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ProblemError(400, f"Idempotency-Key must be at most {MAX_KEY_LENGTH} printable characters.")
    digest = fingerprint(request)
    IdempotencyKey.objects.filter(user=request.user, created_at__lt=timezone.now() - KEEP_FOR).delete()
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(user=request.user, key=key, fingerprint=digest)
        except IntegrityError:
            # Another request holds (or held) the key; its row is committed by the time the insert fails.
            record = IdempotencyKey.objects.get(user=request.user, key=key)
            if record.fingerprint != digest:
                raise ProblemError(
                    422, "This Idempotency-Key was used with a different request body or path within 24 h."
                ) from None
            response["Idempotent-Replayed"] = "true"
            return record.status_code, record.response
        status, body = make()
        # 503 "saved, not yet queued" made its change (the job): a retry must find it, not make another.
        if 200 <= status < 300 or status == 503:
            record.status_code, record.response = status, json.loads(json.dumps(body, default=str))
            record.save(update_fields=["status_code", "response"])
        else:
            record.delete()  # a refusal (429, 409…) may be retried with the same key
    return status, body


def amend(request, status: int, body: dict) -> None:
    """Replace the stored answer of this request's key: what happened after commit changed it (a job
    saved whose message the broker could not take is a 503, and its repeats must say so too)."""
    key = request.headers.get("Idempotency-Key", "")
    if key:
        IdempotencyKey.objects.filter(user=request.user, key=key).update(
            status_code=status, response=json.loads(json.dumps(body, default=str))
        )
