"""A/B experiments: their arms, and one cell per prompt × seed × arm with the job that rendered it.

The tables were created by lanes before experiments had an app of their own; they keep their names.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.access import visible_rows
from accounts.models import Team
from lanes.models import Job, Lane, ModelVersion


class ExperimentQuerySet(models.QuerySet):
    def visible_to(self, user) -> ExperimentQuerySet:
        return visible_rows(self, user, "created_by", "team_id")


class Experiment(models.Model):
    """An A/B comparison: every prompt × seed rendered on every arm, as background work."""

    class State(models.TextChoices):
        RUNNING = "running"
        PAUSED = "paused"
        CANCELLED = "cancelled"
        FINISHED = "finished"

    name = models.SlugField(max_length=100, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="experiments")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="experiments")
    prompts = models.JSONField(help_text="[{prompt, expected_text}]")
    seeds = models.JSONField(help_text="The seeds every arm renders each prompt with.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    stopped_reason = models.CharField(max_length=300, blank=True, help_text="Why it stopped before finishing.")
    definition = models.TextField(blank=True, help_text="The YAML it was created from.")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        db_table = "lanes_experiment"

    def __str__(self) -> str:
        return self.name

    def webhook_data(self) -> dict:
        """The experiment as the experiment.finished webhook describes it."""
        return {
            "name": self.name,
            "arms": list(self.arms.values_list("name", flat=True)),
            "jobs": self.cells.count(),
            "created_at": self.created_at.isoformat(),
            "path": f"/experiments/{self.name}/",  # the console's experiment page, relative to its address
        }


class Arm(models.Model):
    """One engine under test: a lane, a pinned model version, and optional parameter overrides."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    name = models.SlugField(max_length=50)
    position = models.PositiveSmallIntegerField(default=0)
    lane = models.ForeignKey(Lane, on_delete=models.PROTECT, related_name="+")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    steps = models.PositiveSmallIntegerField(null=True, blank=True)
    guidance = models.FloatField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["experiment", "position"]
        db_table = "lanes_arm"
        constraints = [models.UniqueConstraint(fields=["experiment", "name"], name="arm_name_unique_in_experiment")]

    def __str__(self) -> str:
        return self.name


class ExperimentCell(models.Model):
    """One prompt × seed on one arm, and the job that rendered it (once submitted)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="cells")
    arm = models.ForeignKey(Arm, on_delete=models.CASCADE, related_name="cells")
    prompt_index = models.PositiveIntegerField()
    sample_index = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="experiment_cell")

    class Meta:
        ordering = ["prompt_index", "sample_index", "arm__position"]
        db_table = "lanes_experimentcell"
        constraints = [
            models.UniqueConstraint(fields=["arm", "prompt_index", "sample_index"], name="one_cell_per_arm_prompt_seed")
        ]
