"""The outbox: an event becomes one Delivery row per subscribed endpoint, in the caller's transaction.

`emit` is called inside the transaction that makes the change, so the deliveries commit with it
or not at all; the delivery task is sent (by name) only after commit. A message lost on the way
is sent again by beat (`delivery.send_due`), since the row says it is still due.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Delivery, Endpoint

EVENTS: tuple[tuple[str, str], ...] = (
    ("job.succeeded", "A job finished with its final image."),
    ("job.failed", "A job failed (after its retries)."),
    ("verification.flagged", "The typography check flagged a final image for review."),
    ("verification.reviewed", "A person (or auto-fix) decided on a flagged image."),
    ("canary.rolled_back", "A canary was stopped automatically, or a lane was rolled back."),
    ("lane.changed", "A lane's settings, versions or routing changed (fleet-wide)."),
    ("experiment.finished", "An A/B experiment rendered its last job."),
    ("rollout.started", "A progressive rollout of a version began on a lane (its first canary step)."),
    ("rollout.advanced", "A rollout's analysis passed (or ops skipped a step): the canary takes the next share."),
    ("rollout.promoted", "A rollout passed its last step: the version serves all of the lane's new jobs."),
    ("rollout.rolled_back", "A rollout's analysis failed, or its version would not load: the canary was stopped."),
    ("rollout.paused", "Ops paused a rollout: it holds its step (a failing analysis still rolls it back)."),
    ("rollout.resumed", "Ops resumed a paused rollout."),
    ("rollout.aborted", "A rollout was stopped by hand (or its canary was ended another way)."),
)
EVENT_NAMES = frozenset(name for name, _ in EVENTS)
# About the shared fleet (lanes, canaries): every team's endpoints that want them get them.
FLEET_EVENTS = frozenset({"canary.rolled_back", "lane.changed"}) | {
    name for name, _ in EVENTS if name.startswith("rollout.")
}


def emit(event: str, data: dict | Callable[[], dict], team_id: int | None) -> int:
    """Write a delivery of a team's `event` (a job's, a review's, an experiment's) for each enabled
    endpoint of that team that wants it, and send them after commit. Returns how many were written.

    `data` may be a function that returns it (`job.webhook_data`): it is called only when an endpoint
    wants the event, so a team without endpoints costs its finishing jobs no query.

    A job of a user in no team belongs to no team's endpoints: nothing is written for it."""
    if event not in EVENT_NAMES or event in FLEET_EVENTS:
        raise ValueError(f"{event!r} is not a team's webhook event")
    if team_id is None:
        return 0
    return _write(event, data, Endpoint.objects.filter(enabled=True, team_id=team_id))


def emit_fleet(event: str, data: dict | Callable[[], dict]) -> int:
    """Write a delivery of a fleet-wide `event` for each enabled endpoint, of any team, that wants it."""
    if event not in FLEET_EVENTS:
        raise ValueError(f"{event!r} is not a fleet-wide webhook event")
    return _write(event, data, Endpoint.objects.filter(enabled=True))


def _write(event: str, data: dict | Callable[[], dict], endpoints) -> int:
    # The event list is a short JSON array: filtered here, since SQLite cannot search inside one.
    wanted = [pk for pk, events in endpoints.values_list("pk", "events") if event in events]
    if not wanted:
        return 0
    now = timezone.now()
    payload = {"type": event, "timestamp": now.isoformat(), "data": data() if callable(data) else data}
    tries = max_attempts()
    deliveries = Delivery.objects.bulk_create(
        Delivery(endpoint_id=pk, event=event, payload=payload, max_attempts=tries, next_attempt_at=now, queued_at=now)
        for pk in wanted
    )
    ids = [delivery.pk for delivery in deliveries]
    # Robust: a broker that is down must not fail the committed change; beat sends the rows later.
    transaction.on_commit(lambda: send(ids), robust=True)
    return len(ids)


def max_attempts() -> int:
    return 1 + len(settings.WEBHOOK_RETRY_SCHEDULE)


def send(delivery_ids: list[int], countdown: float | None = None) -> None:
    for pk in delivery_ids:
        current_app.send_task("webhooks.tasks.deliver", args=(pk,), queue=settings.WEBHOOK_QUEUE, countdown=countdown)
