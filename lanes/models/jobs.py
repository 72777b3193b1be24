"""Jobs (a brief on its way through a lane), their images, and the workers that run them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.access import visible_rows
from accounts.models import Team
from webhooks import outbox

from .fleet import Lane, ModelVersion, Priority
from .shadow import Shadow


class JobQuerySet(models.QuerySet):
    def visible_to(self, user) -> JobQuerySet:
        # A shadow job is nobody's brief: admins see it on its shadow's page only.
        return visible_rows(self.filter(shadow_of__isnull=True), user, "owner", "team_id")

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

    class Deferral(models.TextChoices):
        """Why a deferred job waits, which decides what releases it (lanes.dispatch.release_deferred)."""

        PRESSURE = "pressure", "its lane is saturated"
        QUOTA = "quota", "its team is over a soft limit"
        OFF_PEAK = "off-peak", "background work waits for its lane's off-peak window"

    class Stage(models.TextChoices):
        DRAFT = "draft"
        LOADING = "loading"  # the draft (or only) stage waits for its model to load on the worker
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
    # Why the job now runs on another version than it was routed to (a canary stopped, a rollback).
    version_note = models.CharField(max_length=300, blank=True)

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    admission = models.CharField(max_length=10, choices=Admission.choices, default=Admission.ADMITTED)
    admission_reason = models.CharField(max_length=300, blank=True)
    # Deferral: when admission held the job back, and when it was released into its lane's queue.
    deferred_at = models.DateTimeField(null=True, blank=True)
    deferral = models.CharField(max_length=10, choices=Deferral.choices, blank=True, default="", db_default="")
    released_at = models.DateTimeField(null=True, blank=True)
    # Sent by the routing policy (intent → lane, the canary draw) rather than to a lane and
    # version by name (an experiment arm): canary judgement compares routed traffic only.
    routed = models.BooleanField(default=True, db_default=True)
    requested_lane = models.ForeignKey(
        Lane, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="The intent's lane."
    )
    # LoRA adapters applied to the render, pinned at submission: [{"id", "name", "weight"}, ...].
    adapters = models.JSONField(default=list, blank=True)
    # What a hosted engine charged for the job (GPU time is priced from gpu_seconds instead).
    api_cost = models.FloatField(default=0.0, db_default=0.0)
    stage = models.CharField(max_length=14, choices=Stage.choices, default=Stage.DRAFT)
    refine_batch_size = models.PositiveSmallIntegerField(null=True, blank=True)
    oom_count = models.PositiveSmallIntegerField(default=0)
    progress_step = models.PositiveSmallIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times a worker claimed it.")
    # Times its worker was lost under it (killed, crashed, cut off): not the job's fault, so counted apart
    # from its own failures (an error fails it at once; an OOM is retried in place, see oom_count).
    lost_workers = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Step-boundary preemption (lanes.preemption): times paused, seconds paused, and the current pause.
    preemptions = models.PositiveSmallIntegerField(default=0, db_default=0)
    paused_seconds = models.FloatField(default=0.0, db_default=0.0)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_for = models.CharField(max_length=10, choices=Priority.choices, blank=True)
    submitted_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    run_seconds = models.FloatField(null=True, blank=True, help_text="Wall time of the pipeline call.")
    # A cold start: loading the model the job waited for, apart from its run (kept out of run-time figures).
    load_seconds = models.FloatField(null=True, blank=True, help_text="Time spent loading the model for this job.")
    gpu_seconds = models.FloatField(
        null=True, blank=True, help_text="Device time billed to the job: GPU-seconds, or CPU-seconds on a CPU worker."
    )
    peak_memory_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="Peak GPU memory allocated; on CPU, the peak rise of the process's RSS."
    )
    device = models.CharField(max_length=20, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    gpu_index = models.SmallIntegerField(null=True, blank=True)
    gpu_name = models.CharField(max_length=100, blank=True, help_text="The accelerator's model, for pricing.")
    error = models.TextField(blank=True)
    rerender_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rerenders")
    # A shadow render (lanes/shadow.py): the production job it copies, and the shadow that sampled it.
    shadow_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="shadows")
    shadow_run = models.ForeignKey(Shadow, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")

    objects = JobQuerySet.as_manager()

    # Not a column: set by submit_brief on the job it returns (seconds before a retry when admission refused it).
    retry_after: int | None
    # Not a column: set by dispatch when the broker was unreachable (the job is saved; reconcile sends it).
    queueing_down: bool = False

    class Meta:
        ordering = ["-submitted_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-submitted_at"]),
            models.Index(fields=["state", "lane"]),
            models.Index(fields=["lane", "finished_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["shadow_of"], condition=Q(shadow_of__isnull=False), name="one_shadow_job_per_job"
            )
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL

    @property
    def is_cancellable(self) -> bool:
        return self.state in self.CANCELLABLE or self.is_paused

    @property
    def is_paused(self) -> bool:
        """Running, but paused at a step boundary while a higher class renders in its slot."""
        return self.state == self.State.RUNNING and self.paused_at is not None

    @property
    def paused_for_seconds(self) -> float:
        return (timezone.now() - self.paused_at).total_seconds() if self.paused_at else 0.0

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
        return self.percent_at(self.progress_step)

    def percent_at(self, step: int) -> int:
        total = self.total_steps
        return int(100 * min(step, total) / total) if total else 0

    @property
    def deferred_seconds(self) -> float | None:
        """How long admission held it back (None if it never was, or is still waiting)."""
        if self.deferred_at and self.released_at:
            return (self.released_at - self.deferred_at).total_seconds()
        return None

    @property
    def admission_note(self) -> str:
        """Admission's reason, and how long the job was held back once it was released."""
        waited = self.deferred_seconds
        return self.admission_reason + (f"; released after {waited:.1f} s" if waited is not None else "")

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

    @property
    def waiting_queue(self) -> str:
        if self.stage == self.Stage.REFINE_QUEUED:
            return self.lane.refine_queue
        return settings.HOSTED_QUEUE if self.model_version.is_hosted else self.lane.queue

    def waiting_note(self) -> str:
        """Why a queued or deferred job has not started: nobody consumes its queue, or every slot is busy."""
        if self.waiting_queue not in Worker.objects.consumed_queues():
            return f"no worker consumes lane {self.lane.name}"
        return "waiting for a slot"

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

    def webhook_data(self) -> dict:
        """The job as its webhooks (job.succeeded, job.failed) describe it."""
        stages = Artifact.objects.filter(job_id=self.pk).values_list("stage", flat=True)
        moments = {"submitted": self.submitted_at, "started": self.started_at, "finished": self.finished_at}
        return {
            "id": self.pk,
            "state": self.state,
            "lane": self.lane.name,
            "intent": self.intent,
            "version": self.model_version.name,
            "error": self.error,
            # The console's job-image URL (console.urls), relative to the console's address.
            "images": {stage: f"/jobs/{self.pk}/{stage}.png" for stage in stages},
            "timings": {
                **{f"{name}_at": moment.isoformat() if moment else None for name, moment in moments.items()},
                "queue_seconds": self.queue_seconds,
                "run_seconds": self.run_seconds,
                "gpu_seconds": self.gpu_seconds,
            },
        }

    # State transitions. Each is a conditional UPDATE: the row count says who won.

    def release(self) -> bool:
        """A deferred job goes into its lane's queue; False if someone else released or cancelled it."""
        now = timezone.now()
        done = Job.objects.filter(pk=self.pk, state=self.State.DEFERRED).update(
            state=self.State.QUEUED, released_at=now
        )
        if done:
            self.state, self.released_at = self.State.QUEUED, now
        return bool(done)

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
            paused_at=None,
            attempts=F("attempts") + 1,
            error="",
            load_seconds=None,
            # A run lost while its model loaded starts again from the draft stage.
            stage=Case(When(stage=self.Stage.LOADING, then=Value(self.Stage.DRAFT)), default=F("stage")),
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
            self.load_seconds = None
            if self.stage == self.Stage.LOADING:
                self.stage = self.Stage.DRAFT
            # A rollout change may have moved the job to another version while it waited for a slot.
            self.refresh_from_db(fields=["model_version", "adapters", "version_note"])
        return bool(claimed)

    def mark_loading(self) -> bool:
        """The running draft (or only) stage waits for its model to load: shown as "loading model…"."""
        done = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker, stage=self.Stage.DRAFT)
        if done.update(stage=self.Stage.LOADING):
            self.stage = self.Stage.LOADING
            return True
        return False

    def mark_loaded(self, seconds: float) -> None:
        """Count a model load against the job's load time (not its run time); a loading stage goes on drafting."""
        Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(
            load_seconds=Coalesce(F("load_seconds"), Value(0.0)) + Value(seconds),
            stage=Case(When(stage=self.Stage.LOADING, then=Value(self.Stage.DRAFT)), default=F("stage")),
        )
        self.load_seconds = (self.load_seconds or 0.0) + seconds
        if self.stage == self.Stage.LOADING:
            self.stage = self.Stage.DRAFT

    @property
    def run_only_seconds(self) -> float | None:
        """Started to finished, less the time its model took to load and the time it was paused (what run-time
        figures count)."""
        execution = self.execution_seconds
        if execution is None:
            return None
        return max(0.0, execution - (self.load_seconds or 0.0) - (self.paused_seconds or 0.0))

    def record_progress(self, step: int) -> None:
        self.progress_step = step
        Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(progress_step=step)

    def mark_paused(self, for_priority: str) -> bool:
        """Paused at a step boundary to hand its slot to a `for_priority` job; False if no longer running here."""
        now = timezone.now()
        done = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(
            paused_at=now, paused_for=for_priority, preemptions=F("preemptions") + 1
        )
        if done:
            self.paused_at, self.paused_for, self.preemptions = now, for_priority, self.preemptions + 1
        return bool(done)

    def mark_resumed(self) -> bool:
        """Back in a slot after a pause; False if it was cancelled (or taken from this worker) meanwhile."""
        paused = self.paused_for_seconds
        done = Job.objects.filter(
            pk=self.pk, state=self.State.RUNNING, worker=self.worker, paused_at__isnull=False
        ).update(paused_at=None, paused_seconds=F("paused_seconds") + paused)
        if done:
            self.paused_at = None
            self.paused_seconds += paused
        return bool(done)

    def still_paused(self) -> bool:
        """Whether the row still says this worker's paused run counts (not cancelled, requeued or deleted)."""
        return Job.objects.filter(
            pk=self.pk, state=self.State.RUNNING, worker=self.worker, paused_at__isnull=False
        ).exists()

    def mark_succeeded(
        self,
        *,
        run_seconds: float,
        gpu_seconds: float,
        peak_memory_bytes: int,
        refine_batch_size: int | None = None,
        api_cost: float = 0.0,
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
            api_cost=api_cost,
        )
        if done:
            self.state, self.finished_at, self.progress_step = self.State.SUCCEEDED, now, self.total_steps
            self.api_cost = api_cost
            self.run_seconds, self.gpu_seconds, self.peak_memory_bytes = run_seconds, gpu_seconds, peak_memory_bytes
            self.refine_batch_size = refine_batch_size
        return bool(done)

    def mark_failed(
        self, error: str, *, run_seconds: float | None = None, peak_memory_bytes: int | None = None
    ) -> bool:
        now = timezone.now()
        with transaction.atomic():
            done = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=self.worker).update(
                state=self.State.FAILED,
                finished_at=now,
                error=error[:4000],
                run_seconds=run_seconds,
                peak_memory_bytes=peak_memory_bytes,
            )
            if done:
                self.refresh_from_db()
                outbox.emit("job.failed", self.webhook_data, self.team_id)
        return bool(done)

    def cancel(self) -> bool:
        """Cancel a job that has not started, or one paused at a step boundary (its worker stops it)."""
        paused = Q(state=self.State.RUNNING, paused_at__isnull=False)
        done = Job.objects.filter(Q(state__in=self.CANCELLABLE) | paused, pk=self.pk).update(
            state=self.State.CANCELLED, finished_at=timezone.now(), paused_at=None
        )
        if done:
            self.refresh_from_db()
        return bool(done)

    def requeue_from(self, worker: str) -> bool:
        """Put a job back in the queue after its worker was lost; fails it once workers were lost under it
        JOB_MAX_WORKER_LOSSES times (a job that kills every worker it lands on must stop somewhere)."""
        running = Job.objects.filter(pk=self.pk, state=self.State.RUNNING, worker=worker)
        with transaction.atomic():
            losses = self.lost_workers + 1
            if losses >= settings.JOB_MAX_WORKER_LOSSES:
                done = running.update(
                    state=self.State.FAILED,
                    finished_at=timezone.now(),
                    lost_workers=losses,
                    error=f"Worker {worker} was lost; gave up after losing {losses} workers under this job.",
                )
            else:
                done = running.update(
                    state=self.State.QUEUED, worker="", gpu_index=None, progress_step=0, started_at=None,
                    lost_workers=losses, paused_at=None,
                )  # fmt: skip
            if done:
                self.refresh_from_db()
                if self.state == self.State.FAILED:
                    outbox.emit("job.failed", self.webhook_data, self.team_id)
        return bool(done)


def with_live_counts(lanes: list[Lane]) -> list[Lane]:
    """The lanes, each with .queued, .running and .deferred set (one query for them all)."""
    counts = Job.objects.live_counts()
    for lane in lanes:
        lane.queued = counts.get((lane.pk, Job.State.QUEUED), 0)
        lane.running = counts.get((lane.pk, Job.State.RUNNING), 0)
        lane.deferred = counts.get((lane.pk, Job.State.DEFERRED), 0)
    return lanes


def with_consumers(lanes: list[Lane]) -> list[Lane]:
    """The lanes, each with .no_consumer set: enabled, yet no live worker consumes its queue (one query)."""
    consumed = Worker.objects.consumed_queues()
    for lane in lanes:
        lane.no_consumer = lane.enabled and lane.unconsumed(consumed)
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
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Retention (ARTIFACT_RETENTION_DAYS) deleted the file; the row stays as the record of what was
    # rendered (size, hash), for the verification that read it and for pages that say it is gone.
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "created_at"]
        constraints = [models.UniqueConstraint(fields=["job", "stage"], name="one_artifact_per_stage")]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.stage}"

    @property
    def absolute_path(self) -> Path:
        return Path(settings.MEDIA_ROOT) / self.path

    @property
    def pruned_after_days(self) -> int | None:
        """How old the image was when retention deleted it (None while it is kept)."""
        return (self.pruned_at - self.created_at).days if self.pruned_at else None


class WorkerQuerySet(models.QuerySet):
    def alive(self, now=None) -> WorkerQuerySet:
        now = now or timezone.now()
        window = settings.WORKER_HEARTBEAT_SECONDS * settings.WORKER_LOST_AFTER_BEATS
        return self.filter(last_seen__gte=now - timedelta(seconds=window), stopped_at__isnull=True)

    def consumed_queues(self) -> set[str]:
        """The queues some live worker consumes now (as its last heartbeat reported them)."""
        return {
            queue for queues in self.alive().values_list("queues", flat=True) for queue in queues.split(",") if queue
        }


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
