"""Progressive rollouts: a lane's plan (canary steps and analysis thresholds) and each rollout run by it."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .fleet import Lane, ModelVersion

# Threshold name -> (lowest, highest, default, what it bounds). Increases are canary minus baseline;
# ratios are canary over baseline. Kept here so the plan, the policy file, the form and the API agree.
THRESHOLDS: dict[str, tuple[float, float, float, str]] = {
    "max_error_rate_increase": (0.0, 1.0, 0.05, "error rate increase"),
    "max_p95_ratio": (1.0, 100.0, 1.5, "p95 run-time ratio"),
    "max_flag_rate_increase": (0.0, 1.0, 0.10, "text-check flag-rate increase"),
    "max_edit_distance_increase": (0.0, 1.0, 0.10, "mean edit-distance increase"),
    "max_gpu_seconds_ratio": (1.0, 100.0, 1.5, "GPU-seconds-per-image ratio"),
}


def default_thresholds() -> dict[str, float]:
    return {name: default for name, (_, _, default, _) in THRESHOLDS.items()}


class RolloutPlan(models.Model):
    """How a new version reaches all of a lane's traffic: canary steps, then 100 % (a promotion).

    `steps` is a list of {"percent": 1-99, "min_samples": n or null, "min_minutes": m or null},
    percentages strictly increasing, each with at least one minimum (lanes/progressive.py checks it).
    """

    lane = models.OneToOneField(Lane, on_delete=models.CASCADE, related_name="rollout_plan")
    steps = models.JSONField(default=list)
    thresholds = models.JSONField(default=default_thresholds)
    require_shadow = models.BooleanField(
        default=False, help_text="No rollout starts until the version's shadow on the lane passes (lanes.shadow.gate)."
    )
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return f"plan of {self.lane.name}: {self.describe()}"

    def describe(self) -> str:
        steps = describe_steps(self.steps)
        return f"a passing shadow → {steps}" if self.require_shadow else steps


def describe_steps(steps: list[dict]) -> str:
    """'5 % for 20 jobs → 25 % for 10 min → 100 %'."""
    parts = []
    for step in steps:
        bounds = []
        if step.get("min_samples"):
            bounds.append(f"{step['min_samples']} jobs")
        if step.get("min_minutes"):
            bounds.append(f"{step['min_minutes']:g} min")
        parts.append(f"{step['percent']} % for {' and '.join(bounds)}")
    return " → ".join([*parts, "100 %"])


class RolloutQuerySet(models.QuerySet):
    def running(self) -> RolloutQuerySet:
        return self.filter(state=Rollout.State.RUNNING)


class Rollout(models.Model):
    """One version rolled out on one lane by its plan; the plan is copied in when it starts."""

    class State(models.TextChoices):
        RUNNING = "running"
        PROMOTED = "promoted"
        ROLLED_BACK = "rolled_back", "rolled back"
        ABORTED = "aborted"

    lane = models.ForeignKey(Lane, on_delete=models.CASCADE, related_name="rollouts")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rollouts")
    baseline = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    steps = models.JSONField(default=list)
    thresholds = models.JSONField(default=default_thresholds)
    step = models.PositiveSmallIntegerField(default=0, help_text="Index into steps of the step now running.")
    step_started_at = models.DateTimeField(default=timezone.now)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.RUNNING)
    reason = models.CharField(max_length=500, blank=True, help_text="Why it ended (or was paused).")
    # The latest analysis beat made of the current step: one entry per metric (lanes/canary.py MetricCheck).
    analysis = models.JSONField(default=list, blank=True)
    analysed_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = RolloutQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lane"],
                condition=Q(state="running"),
                name="one_running_rollout_per_lane",
                violation_error_message="The lane already has a rollout running.",
            ),
        ]

    def __str__(self) -> str:
        return f"rollout of {self.version.name} on {self.lane.name} ({self.state})"

    @property
    def current(self) -> dict | None:
        return self.steps[self.step] if self.step < len(self.steps) else None

    @property
    def is_last_step(self) -> bool:
        return self.step >= len(self.steps) - 1

    @property
    def next_percent(self) -> int:
        return 100 if self.is_last_step else self.steps[self.step + 1]["percent"]

    def plan_rows(self) -> list[dict]:
        """Each step with whether it is done, current or to come, then the final 100 %."""
        done = self.state == self.State.PROMOTED
        at = "current" if self.state == self.State.RUNNING else ("done" if done else "stopped here")
        rows = []
        for i, step in enumerate(self.steps):
            where = "done" if i < self.step else (at if i == self.step else "to come")
            rows.append({**step, "index": i + 1, "where": where})
        rows.append({"percent": 100, "index": len(self.steps) + 1, "where": "done" if done else "to come"})
        return rows

    def describe(self) -> str:
        return describe_steps(self.steps)
