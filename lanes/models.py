from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class CheckpointError(Exception):
    """A checkpoint that cannot be used: outside MODELS_ROOT, missing or corrupt."""


class Priority(models.TextChoices):
    CRITICAL = "critical"
    STANDARD = "standard"
    BACKGROUND = "background"


class ModelVersion(models.Model):
    class Family(models.TextChoices):
        STABLE_DIFFUSION = "stable-diffusion", "Stable Diffusion (txt2img, img2img)"
        LATENT_UPSCALER_X2 = "latent-upscaler-x2", "Stable Diffusion latent upscaler (x2)"

    class Status(models.TextChoices):
        STAGED = "staged"
        VALIDATING = "validating"
        VALIDATED = "validated"
        INVALID = "invalid", "failed validation"
        ACTIVE = "active"
        RETIRED = "retired"

    # Versions a lane may be switched to (as its active or canary version).
    DEPLOYABLE = (Status.VALIDATED, Status.ACTIVE)

    class DType(models.TextChoices):
        FLOAT32 = "float32"
        FLOAT16 = "float16"
        BFLOAT16 = "bfloat16"

    name = models.SlugField(max_length=100, unique=True)
    family = models.CharField(max_length=40, choices=Family.choices, default=Family.STABLE_DIFFUSION)
    location = models.CharField(
        max_length=500,
        help_text="A diffusers folder or a .safetensors file, relative to MODELS_ROOT.",
    )
    config_location = models.CharField(
        max_length=500,
        blank=True,
        help_text="For a single-file checkpoint: a diffusers folder (under MODELS_ROOT) holding its configs.",
    )
    content_hash = models.CharField(max_length=64, blank=True)
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.FLOAT32)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STAGED)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    # Validation: a smoke render with a fixed seed on a worker, before the version may serve.
    validated_at = models.DateTimeField(null=True, blank=True)
    validation_error = models.TextField(blank=True)
    smoke_image = models.CharField(max_length=300, blank=True, help_text="Relative to MEDIA_ROOT.")
    smoke_seconds = models.FloatField(null=True, blank=True)
    validated_on = models.CharField(max_length=200, blank=True, help_text="The worker that ran the smoke render.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_deployable(self) -> bool:
        return self.status in self.DEPLOYABLE

    def in_use(self) -> bool:
        """Serving somewhere: a lane's active, canary or refine version."""
        return Lane.objects.filter(Q(active_version=self) | Q(canary_version=self) | Q(refine_version=self)).exists()

    def sync_status(self) -> None:
        """ACTIVE while a lane serves it; back to VALIDATED when none does (never touches other states)."""
        serving = self.in_use()
        if serving and self.status == self.Status.VALIDATED:
            target = self.Status.ACTIVE
        elif not serving and self.status == self.Status.ACTIVE:
            target = self.Status.VALIDATED
        else:
            return
        ModelVersion.objects.filter(pk=self.pk, status=self.status).update(status=target)
        self.status = target

    def checkpoint_path(self) -> Path:
        return resolve_checkpoint(self.location)

    def config_path(self) -> Path | None:
        return resolve_checkpoint(self.config_location) if self.config_location else None

    def compute_hash(self) -> str:
        return hash_checkpoint(self.checkpoint_path())


def resolve_checkpoint(location: str) -> Path:
    """The absolute path of a checkpoint, refusing anything outside MODELS_ROOT."""
    root = Path(settings.MODELS_ROOT).resolve()
    if not location or not location.strip():
        raise CheckpointError("No checkpoint location given.")
    path = (root / location).resolve()
    if not path.is_relative_to(root):
        raise CheckpointError(f"Checkpoint {location!r} is outside MODELS_ROOT ({root}).")
    if not path.exists():
        raise CheckpointError(f"Checkpoint {location!r} does not exist under MODELS_ROOT ({root}).")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"Checkpoint folder {location!r} has no model_index.json: not a diffusers pipeline.")
    elif path.suffix != ".safetensors":
        raise CheckpointError(f"Checkpoint file {location!r} is not a .safetensors file.")
    return path


def hash_checkpoint(path: Path) -> str:
    """sha256 over every file of a checkpoint (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class Lane(models.Model):
    name = models.SlugField(max_length=50, unique=True)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    active_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="lanes")
    default_steps = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    min_steps = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    max_steps = models.PositiveSmallIntegerField(default=50, validators=[MinValueValidator(1)])
    default_guidance = models.FloatField(default=7.5)
    min_guidance = models.FloatField(default=0.0)
    max_guidance = models.FloatField(default=20.0)
    default_width = models.PositiveIntegerField(default=64)
    default_height = models.PositiveIntegerField(default=64)
    min_size = models.PositiveIntegerField(default=32)
    max_size = models.PositiveIntegerField(default=1024)
    max_concurrency = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    queue = models.CharField(max_length=100, blank=True, help_text="Celery queue; defaults to lane.<name>.")
    fallback = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    latency_slo_ms = models.PositiveIntegerField(default=1200)
    default_priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.STANDARD)
    # Admission: queued + running jobs at which the lane counts as saturated (background work
    # is deferred, standard work goes to the fallback), and past which every brief is refused.
    defer_depth = models.PositiveIntegerField(default=8, validators=[MinValueValidator(1)])
    hard_cap = models.PositiveIntegerField(default=64, validators=[MinValueValidator(1)])
    # Cascade: a draft at the lane's size and steps, then a batched img2img refine at scale x.
    cascade = models.BooleanField(default=False)
    refine_scale = models.PositiveSmallIntegerField(default=2, validators=[MinValueValidator(1)])
    refine_steps = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    refine_strength = models.FloatField(default=0.5)
    refine_batch_size = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    refine_max_wait_ms = models.PositiveIntegerField(default=50)
    # Typography verification of final images that must carry text.
    verify = models.BooleanField(default=True)
    verify_threshold = models.FloatField(
        default=0.95, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Similarity (1 - normalized edit distance) an expected string needs to pass.",
    )  # fmt: skip
    verify_case_sensitive = models.BooleanField(default=True)
    verify_ignore_punctuation = models.BooleanField(default=False)
    autofix = models.BooleanField(default=False, help_text="Overlay the expected text on flagged images.")
    # The refine stage's pipeline: a latent x2 upscaler, or (empty) img2img with the active version.
    refine_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="refining_lanes"
    )
    # Draining: admits nothing new, but finishes what is queued, deferred and running.
    draining = models.BooleanField(default=False)
    # Rollout: a canary version takes `canary_percent` of new jobs; each job is pinned to its version.
    canary_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="canary_lanes"
    )
    canary_percent = models.PositiveSmallIntegerField(
        default=0, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    canary_started_at = models.DateTimeField(null=True, blank=True)
    # Automatic rollback: the canary is compared with the active version over the window once
    # both arms have `canary_min_samples` finished jobs; any threshold crossed rolls it back.
    canary_window_minutes = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    canary_min_samples = models.PositiveIntegerField(default=20, validators=[MinValueValidator(1)])
    canary_max_error_rate_increase = models.FloatField(
        default=0.05, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Canary error rate minus the active version's, at most.",
    )  # fmt: skip
    canary_max_p95_ratio = models.FloatField(
        default=1.5,
        validators=[MinValueValidator(1.0)],
        help_text="Canary p95 run time over the active one's, at most.",
    )
    canary_max_flag_rate_increase = models.FloatField(
        default=0.10, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Canary verification flag rate minus the active version's, at most.",
    )  # fmt: skip
    # Shown to ops and admins until dismissed (an automatic rollback says why here).
    notice = models.CharField(max_length=500, blank=True)
    notice_at = models.DateTimeField(null=True, blank=True)
    # Optimistic concurrency: every control change bumps it; a change made against an old
    # revision is refused instead of silently overwriting someone else's.
    revision = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_concurrency__gte=1),
                name="lane_max_concurrency_positive",
                violation_error_message="At least one job at a time per GPU.",
            ),
            models.CheckConstraint(
                condition=Q(hard_cap__gte=F("defer_depth")),
                name="lane_hard_cap_above_defer",
                violation_error_message="The hard cap must be at least the defer depth.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.queue:
            self.queue = f"lane.{self.name}"
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        upscaler = self.refine_version
        if upscaler is not None and upscaler.family == ModelVersion.Family.LATENT_UPSCALER_X2:
            if self.refine_scale != 2:
                raise ValidationError({"refine_scale": "A latent x2 upscaler refines at scale 2."})
        if upscaler is not None and upscaler.family != ModelVersion.Family.LATENT_UPSCALER_X2:
            raise ValidationError({"refine_version": f"{upscaler.name} is not an upscaler."})
        if self.active_version_id and self.active_version.family != ModelVersion.Family.STABLE_DIFFUSION:
            raise ValidationError({"active_version": f"{self.active_version.name} cannot render from a prompt."})

    @property
    def refine_queue(self) -> str:
        return f"{self.queue}.refine"

    @property
    def mode(self) -> str:
        if self.enabled:
            return "enabled"
        return "draining" if self.draining else "disabled"

    @property
    def queues(self) -> list[str]:
        return [self.queue, self.refine_queue] if self.cascade else [self.queue]


class LaneRelease(models.Model):
    """One period of a version serving as a lane's active version: the lane's version history."""

    class Outcome(models.TextChoices):
        SERVING = "serving"
        SUPERSEDED = "superseded"
        ROLLED_BACK = "rolled_back", "rolled back"

    lane = models.ForeignKey(Lane, on_delete=models.CASCADE, related_name="releases")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="releases")
    how = models.CharField(max_length=40, help_text="activated, promoted from canary, rollback, policy…")
    started_at = models.DateTimeField(default=timezone.now)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices, default=Outcome.SERVING)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lane"], condition=Q(outcome="serving"), name="one_serving_release_per_lane"
            )
        ]

    def __str__(self) -> str:
        return f"{self.lane_id}: {self.version_id} ({self.outcome})"


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]

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

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        admin = self.role == Role.ADMIN
        type(self.user).objects.filter(pk=self.user_id).update(is_staff=admin, is_superuser=admin)
        self.user.is_staff = self.user.is_superuser = admin


def _membership(user) -> tuple[str, int | None]:
    """(role, team id) of a signed-in user, read once per user object."""
    cached = getattr(user, "_laneway_member", None)
    if cached is None:
        row = Member.objects.filter(user_id=user.pk).values_list("role", "team_id").first()
        role, team = row or (Role.CREATIVE, None)
        cached = user._laneway_member = (Role.ADMIN if user.is_superuser else role, team)
    return cached


def role_of(user) -> str:
    if user is None or not user.is_authenticated:
        return ""
    return _membership(user)[0]


def team_of(user) -> int | None:
    if user is None or not user.is_authenticated:
        return None
    return _membership(user)[1]


def visible_rows(queryset, user, owner: str, team: str):
    """Rows a user may see: every one for ops and admins; a creative's own (by `owner`) and their team's."""
    if has_role(user, Role.OPS):
        return queryset
    team_id = team_of(user)
    mine = Q(**{owner: user})
    return queryset.filter(mine | Q(**{team: team_id}) if team_id else mine)


def has_role(user, role: str) -> bool:
    current = role_of(user)
    return bool(current) and ROLE_RANK[current] >= ROLE_RANK[role]


class Route(models.Model):
    """The routing policy: an intent names the lane its briefs go to."""

    intent = models.SlugField(max_length=50, unique=True)
    label = models.CharField(max_length=100, blank=True)
    lane = models.ForeignKey(Lane, on_delete=models.PROTECT, related_name="routes")
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.STANDARD)

    class Meta:
        ordering = ["intent"]

    def __str__(self) -> str:
        return self.label or self.intent


class JobQuerySet(models.QuerySet):
    def visible_to(self, user) -> JobQuerySet:
        return visible_rows(self, user, "owner", "team_id")

    def live_counts(self) -> dict[tuple[int, str], int]:
        """Queued, running and deferred jobs per (lane id, state), in one grouped query."""
        rows = (
            self.filter(state__in=(Job.State.QUEUED, Job.State.RUNNING, Job.State.DEFERRED))
            .values("lane_id", "state")
            .annotate(n=models.Count("id"))
            .order_by()
        )
        return {(row["lane_id"], row["state"]): row["n"] for row in rows}

    def stuck_queued(self, now=None) -> JobQuerySet:
        """Queued jobs whose broker message has not been picked up for too long."""
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=settings.REDISPATCH_AFTER_SECONDS)
        return self.filter(state=Job.State.QUEUED).filter(
            Q(dispatched_at__lt=cutoff) | Q(dispatched_at__isnull=True, submitted_at__lt=cutoff)
        )

    def running_on_lost_workers(self, now=None) -> JobQuerySet:
        now = now or timezone.now()
        alive = Worker.objects.alive(now).values("ident")
        return self.filter(state=Job.State.RUNNING).exclude(worker__in=alive)


class Job(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"
        DEFERRED = "deferred"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        REJECTED = "rejected"

    class Admission(models.TextChoices):
        ADMITTED = "admitted"
        DEFERRED = "deferred"
        REROUTED = "rerouted"
        REJECTED = "rejected"

    class Stage(models.TextChoices):
        DRAFT = "draft"
        REFINE_QUEUED = "refine-queued"
        REFINING = "refining"

    TERMINAL = (State.SUCCEEDED, State.FAILED, State.CANCELLED, State.REJECTED)
    CANCELLABLE = (State.QUEUED, State.DEFERRED)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    prompt = models.TextField()
    expected_text = models.CharField(max_length=500, blank=True)
    intent = models.SlugField(max_length=50)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.STANDARD)
    lane = models.ForeignKey(Lane, on_delete=models.PROTECT, related_name="jobs")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="jobs")
    seed = models.BigIntegerField(validators=[MinValueValidator(0), MaxValueValidator(2**63 - 1)])
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    steps = models.PositiveSmallIntegerField()
    guidance = models.FloatField()
    # Cascade jobs: the refine stage's steps and strength, pinned at submission (0: no refine).
    refine_steps = models.PositiveSmallIntegerField(default=0)
    refine_strength = models.FloatField(default=0.0)
    refine_scale = models.PositiveSmallIntegerField(default=1)
    refine_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="refined_jobs"
    )

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    admission = models.CharField(max_length=10, choices=Admission.choices, default=Admission.ADMITTED)
    admission_reason = models.CharField(max_length=300, blank=True)
    requested_lane = models.ForeignKey(
        Lane, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="The intent's lane."
    )
    stage = models.CharField(max_length=14, choices=Stage.choices, default=Stage.DRAFT)
    refine_batch_size = models.PositiveSmallIntegerField(null=True, blank=True)
    oom_count = models.PositiveSmallIntegerField(default=0)
    progress_step = models.PositiveSmallIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    submitted_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    run_seconds = models.FloatField(null=True, blank=True, help_text="Wall time of the pipeline call.")
    gpu_seconds = models.FloatField(null=True, blank=True, help_text="Accelerator time billed to the job (0 on CPU).")
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    device = models.CharField(max_length=20, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    gpu_index = models.SmallIntegerField(null=True, blank=True)
    gpu_name = models.CharField(max_length=100, blank=True, help_text="The accelerator's model, for pricing.")
    error = models.TextField(blank=True)
    rerender_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rerenders")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-submitted_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-submitted_at"]),
            models.Index(fields=["state", "lane"]),
            models.Index(fields=["lane", "finished_at"]),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL

    @property
    def is_cancellable(self) -> bool:
        return self.state in self.CANCELLABLE

    @property
    def is_cascade(self) -> bool:
        return self.refine_steps > 0

    @property
    def effective_refine_steps(self) -> int:
        if not self.refine_steps:
            return 0
        if self.refine_version_id:  # an upscaler runs its whole schedule
            return self.refine_steps
        # img2img denoises only the last `strength` share of its schedule.
        return min(int(self.refine_steps * self.refine_strength), self.refine_steps)

    @property
    def total_steps(self) -> int:
        return self.steps + self.effective_refine_steps

    @property
    def progress_percent(self) -> int:
        if self.state == self.State.SUCCEEDED:
            return 100
        total = self.total_steps
        return int(100 * min(self.progress_step, total) / total) if total else 0

    @property
    def stage_progress(self) -> list[dict]:
        """Per stage: name, steps done, steps in all, percent (one stage, or draft + refine)."""
        done = self.total_steps if self.state == self.State.SUCCEEDED else min(self.progress_step, self.total_steps)
        stages = [("draft" if self.is_cascade else "render", 0, self.steps)]
        if self.is_cascade:
            stages.append(("upscale" if self.refine_version_id else "refine", self.steps, self.effective_refine_steps))
        return [
            {"name": name, "done": max(0, min(done - start, size)), "steps": size,
             "percent": int(100 * max(0, min(done - start, size)) / size) if size else 100}
            for name, start, size in stages
        ]  # fmt: skip

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace of the steps run so far (None until a step has run)."""
        if self.state != self.State.RUNNING or not self.started_at or not self.progress_step:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return max(0.0, elapsed / self.progress_step * (self.total_steps - self.progress_step))

    def draft_artifact(self) -> Artifact | None:
        for artifact in self.artifacts.all():
            if artifact.stage == Artifact.Stage.DRAFT:
                return artifact
        return None

    @property
    def queue_seconds(self) -> float | None:
        return (self.started_at - self.submitted_at).total_seconds() if self.started_at else None

    @property
    def execution_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def total_seconds(self) -> float | None:
        return (self.finished_at - self.submitted_at).total_seconds() if self.finished_at else None

    def final_artifact(self) -> Artifact | None:
        for artifact in self.artifacts.all():
            if artifact.stage == Artifact.Stage.FINAL:
                return artifact
        return None

    # State transitions. Each is a conditional UPDATE: the row count says who won.

    def mark_dispatched(self) -> None:
        self.dispatched_at = timezone.now()
        Job.objects.filter(pk=self.pk).update(dispatched_at=self.dispatched_at)

    def mark_running(self, worker: str, gpu_index: int | None, device: str, gpu_name: str = "") -> bool:
        now = timezone.now()
        claimed = Job.objects.filter(pk=self.pk, state=self.State.QUEUED).update(
            state=self.State.RUNNING,
            started_at=now,
            worker=worker,
            gpu_index=gpu_index,
            gpu_name=gpu_name,
            device=device,
            progress_step=0,
            attempts=F("attempts") + 1,
            error="",
        )
        if claimed:
            self.state, self.started_at, self.worker, self.gpu_index, self.device = (
                self.State.RUNNING,
                now,
                worker,
                gpu_index,
                device,
            )
            self.progress_step, self.attempts, self.error = 0, self.attempts + 1, ""
        return bool(claimed)

    def record_progress(self, step: int) -> None:
        self.progress_step = step
        Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(progress_step=step)

    def mark_succeeded(
        self, *, run_seconds: float, gpu_seconds: float, peak_memory_bytes: int, refine_batch_size: int | None = None
    ) -> bool:
        now = timezone.now()
        done = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(
            refine_batch_size=refine_batch_size,
            state=self.State.SUCCEEDED,
            finished_at=now,
            progress_step=self.total_steps,
            run_seconds=run_seconds,
            gpu_seconds=gpu_seconds,
            peak_memory_bytes=peak_memory_bytes,
        )
        if done:
            self.state, self.finished_at, self.progress_step = self.State.SUCCEEDED, now, self.total_steps
            self.run_seconds, self.gpu_seconds, self.peak_memory_bytes = run_seconds, gpu_seconds, peak_memory_bytes
            self.refine_batch_size = refine_batch_size
        return bool(done)

    def mark_failed(
        self, error: str, *, run_seconds: float | None = None, peak_memory_bytes: int | None = None
    ) -> bool:
        now = timezone.now()
        done = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(
            state=self.State.FAILED,
            finished_at=now,
            error=error[:4000],
            run_seconds=run_seconds,
            peak_memory_bytes=peak_memory_bytes,
        )
        if done:
            self.refresh_from_db()
        return bool(done)

    def cancel(self) -> bool:
        done = Job.objects.filter(pk=self.pk, state__in=self.CANCELLABLE).update(
            state=self.State.CANCELLED, finished_at=timezone.now()
        )
        if done:
            self.refresh_from_db()
        return bool(done)

    def requeue_from(self, worker: str) -> bool:
        """Put a job back in the queue after its worker was lost; fails it past the attempt limit."""
        running = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=worker)
        if self.attempts >= settings.JOB_MAX_ATTEMPTS:
            done = running.update(
                state=self.State.FAILED,
                finished_at=timezone.now(),
                error=f"Worker {worker} was lost; gave up after {self.attempts} attempts.",
            )
        else:
            done = running.update(state=self.State.QUEUED, worker="", gpu_index=None, progress_step=0, started_at=None)
        if done:
            self.refresh_from_db()
        return bool(done)


def with_live_counts(lanes: list[Lane]) -> list[Lane]:
    """The lanes, each with .queued, .running and .deferred set (one query for them all)."""
    counts = Job.objects.live_counts()
    for lane in lanes:
        lane.queued = counts.get((lane.pk, Job.State.QUEUED), 0)
        lane.running = counts.get((lane.pk, Job.State.RUNNING), 0)
        lane.deferred = counts.get((lane.pk, Job.State.DEFERRED), 0)
    return lanes


class Artifact(models.Model):
    class Stage(models.TextChoices):
        DRAFT = "draft"
        FINAL = "final"
        FIXED = "fixed", "fixed (text overlaid)"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="artifacts")
    stage = models.CharField(max_length=10, choices=Stage.choices, default=Stage.FINAL)
    path = models.CharField(max_length=300, help_text="Relative to MEDIA_ROOT.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "created_at"]
        constraints = [models.UniqueConstraint(fields=["job", "stage"], name="one_artifact_per_stage")]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.stage}"

    @property
    def absolute_path(self) -> Path:
        return Path(settings.MEDIA_ROOT) / self.path


class WorkerQuerySet(models.QuerySet):
    def alive(self, now=None) -> WorkerQuerySet:
        now = now or timezone.now()
        window = settings.WORKER_HEARTBEAT_SECONDS * settings.WORKER_LOST_AFTER_BEATS
        return self.filter(last_seen__gte=now - timedelta(seconds=window), stopped_at__isnull=True)


class Worker(models.Model):
    """A worker process, as its heartbeats describe it. `ident` is host:pid, so a restart is a new worker."""

    ident = models.CharField(max_length=200, unique=True)
    node = models.CharField(max_length=200, blank=True, help_text="Celery node name, for control commands.")
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    queues = models.CharField(max_length=500, blank=True)
    device = models.CharField(max_length=20, blank=True)
    gpu_index = models.SmallIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    oom_count = models.PositiveIntegerField(default=0)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["hostname", "pid"]

    def __str__(self) -> str:
        return self.ident

    @property
    def queue_list(self) -> list[str]:
        return [q for q in self.queues.split(",") if q]


class VerificationQuerySet(models.QuerySet):
    def visible_to(self, user) -> VerificationQuerySet:
        return visible_rows(self, user, "job__owner", "job__team_id")

    def awaiting_review(self) -> VerificationQuerySet:
        return self.filter(status=Verification.Status.FLAGGED, decision="")

    def pass_rates(self):
        """Pass rate per lane and model version over finished verifications (computed in the database)."""
        judged = self.filter(status__in=(Verification.Status.PASSED, Verification.Status.FLAGGED))
        return (
            judged.values("lane_id", "lane__name", "model_version_id", "model_version__name")
            .annotate(
                total=models.Count("id"),
                passed=models.Count("id", filter=Q(status=Verification.Status.PASSED)),
            )
            .order_by("lane__name", "model_version__name")
        )


class Verification(models.Model):
    """The OCR check of one artifact against the text its brief expects, and the review of it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        PASSED = "passed"
        FLAGGED = "flagged"
        NOT_APPLICABLE = "not_applicable", "not applicable"
        ERROR = "error"

    class Decision(models.TextChoices):
        NONE = "", "awaiting review"
        APPROVED = "approved"
        REJECTED = "rejected"
        FIXED = "fixed", "auto-fixed"
        RERENDERED = "rerendered", "re-rendered"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="verifications")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="verifications")
    lane = models.ForeignKey(Lane, null=True, on_delete=models.SET_NULL, related_name="+")
    model_version = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="followups",
        help_text="The flagged verification this one re-checks (after an auto-fix).",
    )  # fmt: skip
    expected = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    reason = models.CharField(max_length=300, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ocr_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    decision = models.CharField(max_length=12, choices=Decision.choices, default="", blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(null=True, blank=True)

    objects = VerificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"verification {self.pk} of job {self.job_id} ({self.status})"

    def finish(self, status: str, reason: str, details: dict | None = None, ocr_ms: float | None = None) -> bool:
        done = Verification.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            status=status, reason=reason[:300], details=details or {}, ocr_ms=ocr_ms, finished_at=timezone.now()
        )
        if done:
            self.status, self.reason, self.details, self.ocr_ms = status, reason[:300], details or {}, ocr_ms
        return bool(done)

    def decide(self, decision: str, by) -> bool:
        """Record a review decision once; False if someone already decided."""
        now = timezone.now()
        done = Verification.objects.filter(pk=self.pk, decision="").update(
            decision=decision, decided_by=by, decided_at=now
        )
        if done:
            self.decision, self.decided_by, self.decided_at = decision, by, now
        return bool(done)


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

    def __str__(self) -> str:
        return self.name


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
        constraints = [
            models.UniqueConstraint(fields=["arm", "prompt_index", "sample_index"], name="one_cell_per_arm_prompt_seed")
        ]
