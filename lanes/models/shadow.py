"""Shadow renders: a version renders a share of a lane's real briefs as background work, never shown to their
creatives, so it can be compared with production before any user sees it."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .fleet import Lane, ModelVersion


class ShadowQuerySet(models.QuerySet):
    def running(self) -> ShadowQuerySet:
        return self.filter(stopped_at__isnull=True)


class Shadow(models.Model):
    """One period of a version shadowing a lane: while running, `percent` of the lane's routed jobs that finish
    are rendered again on `version` (same prompt, seed, size, steps) as shadow jobs (`Job.shadow_of`)."""

    lane = models.ForeignKey(Lane, on_delete=models.CASCADE, related_name="shadows")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="shadows")
    percent = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(100)])
    # Shadow jobs are owned by whoever started the shadow (never by the creative whose brief it copies).
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    stopped_reason = models.CharField(max_length=300, blank=True)
    # Sampled briefs that could not be rendered on the version (adapters it lacks, the lane at its hard cap…).
    skipped = models.PositiveIntegerField(default=0)
    last_skip = models.CharField(max_length=300, blank=True)

    objects = ShadowQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lane"], condition=Q(stopped_at__isnull=True), name="one_running_shadow_per_lane"
            ),
            models.CheckConstraint(
                condition=Q(percent__gte=1, percent__lte=100),
                name="shadow_percent_1_to_100",
                violation_error_message="A shadow takes between 1 and 100 percent of the lane's briefs.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version_id} shadowing {self.lane_id}"

    @property
    def is_running(self) -> bool:
        return self.stopped_at is None
