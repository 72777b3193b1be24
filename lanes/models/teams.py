"""What a team may use of the fleet: its fair-share weight and optional quotas, and the lanes' off-peak windows."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

from accounts.models import Team

from .fleet import Lane


class TeamQuota(models.Model):
    """A team's weight in fair share and its optional limits. A team without a row has weight 1 and no limits.

    Each limit has a soft value (over it, briefs are deferred to off-peak) and a hard one (over it,
    briefs are refused, saying which limit, the usage and when it resets); either may be unset.
    """

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="quota")
    weight = models.FloatField(default=1.0, validators=[MinValueValidator(0.001)])
    max_concurrent_soft = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent_hard = models.PositiveIntegerField(null=True, blank=True)
    gpu_seconds_day_soft = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    gpu_seconds_day_hard = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    spend_month_soft = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    spend_month_hard = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    denied_lanes = models.ManyToManyField(Lane, blank=True, related_name="+")

    class Meta:
        ordering = ["team__name"]

    def __str__(self) -> str:
        return f"quota of {self.team}"


class LaneWindow(models.Model):
    """A recurring off-peak window of a lane: it opens on a cron schedule (in `timezone`, else the
    deployment's TIME_ZONE) and lasts `minutes`."""

    class Mode(models.TextChoices):
        BACKGROUND_ONLY = "background-only", "accepts background work only"
        RELEASE = "release", "releases deferred background work"

    lane = models.ForeignKey(Lane, on_delete=models.CASCADE, related_name="windows")
    mode = models.CharField(max_length=20, choices=Mode.choices)
    cron = models.CharField(max_length=100, help_text="minute hour day-of-month month day-of-week")
    minutes = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    timezone = models.CharField(max_length=64, blank=True, help_text="An IANA zone; blank: TIME_ZONE.")

    class Meta:
        ordering = ["lane", "mode", "cron"]

    def __str__(self) -> str:
        return f"{self.lane} {self.mode} {self.cron} for {self.minutes} min"

    @property
    def zone_name(self) -> str:
        return self.timezone or settings.TIME_ZONE
