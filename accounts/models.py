"""Teams, members, roles and API credentials: who someone is in Laneway. The bottom layer: imports nothing of ours."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]
        db_table = "lanes_team"  # created by lanes before teams had an app of their own

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    CREATIVE = "creative"
    OPS = "ops"
    ADMIN = "admin"


ROLE_RANK = {Role.CREATIVE: 0, Role.OPS: 1, Role.ADMIN: 2}


class Member(models.Model):
    """A user's team and role. Admins are Django superusers (so the Django admin, where users
    and teams are managed, opens to them alone); the flags follow the role on save."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="member")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="members")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.CREATIVE)

    class Meta:
        db_table = "lanes_member"

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        admin = self.role == Role.ADMIN
        type(self.user).objects.filter(pk=self.user_id).update(is_staff=admin, is_superuser=admin)
        self.user.is_staff = self.user.is_superuser = admin


def _token_digest(secret: str) -> str:
    # Tokens are 32 random bytes: a fast hash is enough (no dictionary to guess from), and lookups stay one index hit.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def usable(self, now=None) -> ApiTokenQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    """A personal API token: it acts as its user (role and team), never more, and may be read-only.

    The secret is shown once; only its SHA-256 is kept, with a prefix to recognise it by.
    """

    PREFIX = "lw_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The token's first characters, to recognise it by.")
    digest = models.CharField(max_length=64, unique=True)
    read_only = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str, *, read_only: bool = False, expires_at=None) -> tuple[ApiToken, str]:
        """A new token and its secret (the only time the secret exists outside the caller)."""
        secret = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=secret[:10], digest=_token_digest(secret),
            read_only=read_only, expires_at=expires_at,
        )  # fmt: skip
        return token, secret

    @classmethod
    def find(cls, secret: str) -> ApiToken | None:
        """The usable token with this secret, or None (unknown, revoked or expired)."""
        if not secret.startswith(cls.PREFIX) or len(secret) > 100:
            return None
        return cls.objects.usable().select_related("user").filter(digest=_token_digest(secret)).first()

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def revoke(self) -> bool:
        """Revoke it; False if it already was."""
        now = timezone.now()
        done = ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
        if done:
            self.revoked_at = now
        return bool(done)

    def touch(self, every_seconds: float = 60.0) -> None:
        """Record use, at most once a minute (a write per request would cost more than the request)."""
        now = timezone.now()
        if self.last_used_at is None or (now - self.last_used_at).total_seconds() >= every_seconds:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


class IdempotencyKey(models.Model):
    """The first answer to a create request sent with an `Idempotency-Key`, replayed to its repeats for a day."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the method, path and body.")
    status_code = models.PositiveSmallIntegerField(default=0)
    response = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_per_user")]

    def __str__(self) -> str:
        return f"{self.key} → {self.status_code}"
