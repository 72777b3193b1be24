"""Managing a team's webhook endpoints: register, rotate the secret, enable or disable, delete, redeliver.

Called by the console's views and the HTTP API alike; the caller checks access and writes the
audit row (the audit log lives in a layer above this one).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Team

from . import outbox
from .addresses import check_url
from .models import Delivery, Endpoint, WebhookError, new_secret

URL_MAX_LENGTH = 500


def clean_events(events: Iterable[str]) -> list[str]:
    """The events in EVENTS order; WebhookError for an unknown one or none at all."""
    chosen = set(events)
    unknown = sorted(chosen - outbox.EVENT_NAMES)
    if unknown:
        raise WebhookError(f"Unknown event {', '.join(unknown)}: choose from {', '.join(n for n, _ in outbox.EVENTS)}.")
    if not chosen:
        raise WebhookError("Choose at least one event.")
    return [name for name, _ in outbox.EVENTS if name in chosen]


def clean_url(url: str) -> str:
    url = url.strip()
    if len(url) > URL_MAX_LENGTH:
        raise WebhookError(f"The URL is longer than {URL_MAX_LENGTH} characters.")
    check_url(url)
    return url


def create_endpoint(team: Team, url: str, events: Iterable[str], by, description: str = "") -> tuple[Endpoint, str]:
    """Register an endpoint; returns it and its secret (to show once)."""
    endpoint = Endpoint.objects.create(
        team=team,
        url=clean_url(url),
        events=clean_events(events),
        description=description.strip()[:200],
        created_by=by if by is not None and by.is_authenticated else None,
    )
    return endpoint, endpoint.secret


def rotate_secret(endpoint: Endpoint, by) -> str:
    """A new secret, used from the next attempt on; returns it (to show once)."""
    endpoint.secret = new_secret()
    endpoint.save(update_fields=["secret"])
    return endpoint.secret


def set_enabled(endpoint: Endpoint, enabled: bool, by) -> None:
    """Enable (which forgets past failures and the automatic disable's reason) or disable an endpoint.
    Deliveries still pending wait while it is disabled, and are sent when it is enabled again."""
    endpoint.enabled = enabled
    endpoint.disabled_reason = ""
    endpoint.failing_since = None
    endpoint.save(update_fields=["enabled", "disabled_reason", "failing_since"])
    if enabled:  # beat sends what waited at its next sweep
        endpoint.deliveries.filter(state=Delivery.State.PENDING).update(queued_at=None)


def delete_endpoint(endpoint: Endpoint, by) -> None:
    endpoint.delete()


def redeliver(delivery: Delivery, by) -> Delivery:
    """One more attempt of a delivery, now (whatever its state). A finished delivery gets that one attempt,
    not its retries again; a pending one keeps the retries it has left."""
    if not delivery.endpoint.enabled:
        raise WebhookError("The endpoint is disabled: enable it first.")
    now = timezone.now()
    with transaction.atomic():
        Delivery.objects.filter(pk=delivery.pk).update(
            state=Delivery.State.PENDING,
            next_attempt_at=now,
            queued_at=now,
            max_attempts=Greatest(F("max_attempts"), F("attempts") + 1)
            if delivery.state == Delivery.State.PENDING
            else F("attempts") + 1,
        )
        transaction.on_commit(lambda: outbox.send([delivery.pk]), robust=True)
    delivery.refresh_from_db()
    return delivery
