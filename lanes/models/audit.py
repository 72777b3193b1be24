"""The append-only audit log of control actions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .fleet import Lane, ModelVersion


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionError("Audit events are append-only.")

    def delete(self):
        raise PermissionError("Audit events are append-only.")


class AuditEvent(models.Model):
    """One control action: who did what to which lane or version, the state before and after.

    Append-only from the application: saving an existing row, updating or deleting raises.
    Names are copied in so the row still reads true after a lane or version is renamed.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, help_text="The user's name, or 'laneway' for automatic actions.")
    action = models.CharField(max_length=40, db_index=True)
    lane = models.ForeignKey(Lane, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    lane_name = models.CharField(max_length=50, blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    target = models.CharField(max_length=200, blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    note = models.TextField(blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise PermissionError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("Audit events are append-only.")

    @classmethod
    def record(
        cls, actor, action: str, *, lane=None, version=None, before=None, after=None, note="", target=""
    ) -> AuditEvent:
        target = target or (lane.name if lane is not None else (version.name if version is not None else ""))
        return cls.objects.create(
            actor=actor if actor is not None and actor.is_authenticated else None,
            actor_name=actor.get_username() if actor is not None and actor.is_authenticated else "laneway",
            action=action,
            lane=lane,
            lane_name=lane.name if lane is not None else "",
            model_version=version,
            target=target,
            before=before or {},
            after=after or {},
            note=note,
        )
