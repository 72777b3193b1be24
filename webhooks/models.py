"""Webhook endpoints of a team, the deliveries written for them (the outbox), and each attempt to send one."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.access import has_role, team_of
from accounts.models import Role, Team

SECRET_PREFIX = "whsec_"


class WebhookError(Exception):
    """Bad input for a webhook (an unknown event, a refused URL); nothing was changed."""


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def new_msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class EndpointQuerySet(models.QuerySet):
    def visible_to(self, user) -> EndpointQuerySet:
        """Every endpoint for an admin; an ops member's team's; none for anyone else."""
        if has_role(user, Role.ADMIN):
            return self
        team_id = team_of(user)
        return self.filter(team_id=team_id) if team_id and has_role(user, Role.OPS) else self.none()


class Endpoint(models.Model):
    """A team's receiver: the URL, the events it wants, and the secret its deliveries are signed with."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    events = models.JSONField(default=list, help_text="The event names it receives.")
    # Kept (not hashed): every delivery is signed with it. Shown once, when created or rotated.
    secret = models.CharField(max_length=100, default=new_secret)
    enabled = models.BooleanField(default=True)
    # Set when Laneway disabled it (deliveries failing for a day); its owners see a banner until it is enabled.
    disabled_reason = models.CharField(max_length=300, blank=True)
    failing_since = models.DateTimeField(null=True, blank=True, help_text="First failure since the last success.")
    last_failure_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["team", "created_at", "id"]

    def __str__(self) -> str:
        return self.url

    @property
    def host(self) -> str:
        """The URL's host alone, for logs and audit rows (the path and query may hold a secret)."""
        return urlsplit(self.url).hostname or "?"

    def mark_succeeded(self) -> None:
        if self.failing_since is not None:
            Endpoint.objects.filter(pk=self.pk).update(failing_since=None)
            self.failing_since = None

    def mark_failing(self, now: datetime) -> bool:
        """Note a failed attempt; disable the endpoint once every delivery has failed for the disable window.
        True if this disabled it."""
        # A streak is broken by a success, or by a quiet spell longer than any retry gap (nothing was
        # failing then): one failure a day apart is not "failing every delivery for a day".
        quiet = timedelta(
            seconds=max(settings.WEBHOOK_RETRY_SCHEDULE, default=0) + 3 * settings.WEBHOOK_TIMEOUT_SECONDS + 60
        )
        stale = models.Q(failing_since__isnull=True) | models.Q(last_failure_at__lt=now - quiet)
        Endpoint.objects.filter(stale, pk=self.pk).update(failing_since=now)
        Endpoint.objects.filter(pk=self.pk).update(last_failure_at=now)
        self.refresh_from_db(fields=["failing_since", "enabled", "last_failure_at"])
        assert self.failing_since is not None
        failing_for = (now - self.failing_since).total_seconds()
        if not self.enabled or failing_for < settings.WEBHOOK_DISABLE_AFTER_SECONDS:
            return False
        reason = f"Disabled automatically: every delivery failed since {self.failing_since:%Y-%m-%d %H:%M} UTC."
        if not Endpoint.objects.filter(pk=self.pk, enabled=True).update(enabled=False, disabled_reason=reason):
            return False
        self.enabled, self.disabled_reason = False, reason
        # What was still waiting will not be tried; owners can redeliver once the receiver is fixed.
        self.deliveries.filter(state=Delivery.State.PENDING).update(
            state=Delivery.State.FAILED, last_error="the endpoint was disabled"
        )
        return True


class DeliveryQuerySet(models.QuerySet):
    def due(self, now: datetime) -> DeliveryQuerySet:
        return self.filter(state=Delivery.State.PENDING, next_attempt_at__lte=now, endpoint__enabled=True)

    def unsent(self, now: datetime) -> DeliveryQuerySet:
        """Due deliveries with no message on its way to a worker (or one that seems lost)."""
        lost = now - timedelta(seconds=settings.REDISPATCH_AFTER_SECONDS)
        return self.due(now).filter(Q(queued_at__isnull=True) | Q(queued_at__lt=lost))


class Delivery(models.Model):
    """One event for one endpoint: written with the event (the outbox), tried until it succeeds or gives up."""

    class State(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    msg_id = models.CharField(max_length=40, unique=True, default=new_msg_id)
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The attempt after which a failure is final: the first and the retry schedule's, or one more after a redeliver.
    max_attempts = models.PositiveSmallIntegerField()
    # When it is due; while an attempt is in flight, when that attempt's lease runs out.
    next_attempt_at = models.DateTimeField(default=timezone.now, null=True, blank=True)
    # When a message for it was last sent to the broker; cleared when a worker takes one. Beat re-sends a
    # due delivery with no message in flight, or one whose message was not taken for REDISPATCH_AFTER_SECONDS.
    queued_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["endpoint", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.msg_id} {self.event} ({self.state})"


class Attempt(models.Model):
    """One try of a delivery, as the delivery log shows it."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    at = models.DateTimeField(default=timezone.now)
    succeeded = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="one_row_per_attempt")]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}"
