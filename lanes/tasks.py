from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from telemetry import push

from . import experiments, rollout  # noqa: F401  (their tasks register with the worker)
from .models import Artifact, Job, Lane, Worker

log = logging.getLogger(__name__)


def _progress_recorder(job: Job, offset: int = 0):
    """A per-step callback: push every step, store progress at most every PROGRESS_DB_EVERY_SECONDS."""
    last_saved = time.monotonic()

    def on_step(step: int) -> None:
        nonlocal last_saved
        push.job_progress(job, offset + step)
        if time.monotonic() - last_saved >= settings.PROGRESS_DB_EVERY_SECONDS:
            job.record_progress(offset + step)
            last_saved = time.monotonic()

    return on_step


def _count_oom(job: Job) -> None:
    from .heartbeat import worker_ident

    Job.objects.filter(pk=job.pk).update(oom_count=F("oom_count") + 1)
    Worker.objects.filter(ident=worker_ident()).update(oom_count=F("oom_count") + 1)
    job.oom_count += 1


def _fail(job: Job, exc: BaseException) -> str:
    from .engines import CheckpointError, MemoryBudgetError

    expected = isinstance(exc, CheckpointError | MemoryBudgetError)
    log.warning("job %s failed: %s", job.pk, exc, exc_info=not expected)
    if job.mark_failed(f"{type(exc).__name__}: {exc}"):
        push.job_state(job)
    return "failed"


@shared_task(name="lanes.tasks.run_job", acks_late=True, ignore_result=True)
def run_job(job_id: int) -> str:
    """Run a job (a cascade's draft stage). Safe to deliver twice: only a conditional claim runs it."""
    from .admission import release_deferred
    from .slots import slots

    related = ("model_version", "lane__fallback__active_version", "experiment_cell")
    job = Job.objects.select_related(*related).filter(pk=job_id).first()
    if job is None:
        return "missing"
    if job.state != Job.State.QUEUED:
        return f"skipped: {job.state}"
    with slots.acquire(job.lane_id, job.priority):
        outcome = _run_claimed(job)
    release_deferred(job.lane)
    experiments.after_job(job)
    return outcome


def _run_claimed(job: Job) -> str:
    from . import engines
    from .heartbeat import worker_ident

    device = engines.current_device()
    if not job.mark_running(worker_ident(), device.gpu_index, device.kind, device.name):
        return "skipped: claimed elsewhere"
    push.job_state(job)
    if job.is_cascade and job.draft_artifact() is not None:
        # Requeued after its worker was lost between the stages: the draft is kept, refine again.
        Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(stage=Job.Stage.REFINE_QUEUED)
        job.stage = Job.Stage.REFINE_QUEUED
        push.job_state(job)
        return _queue_refine(job)

    scale = job.refine_scale if job.is_cascade else 1
    width, height = job.width // scale, job.height // scale
    on_step = _progress_recorder(job)
    for attempt in (1, 2):
        try:
            with engines.engines.use(job.model_version, width=width, height=height) as engine:
                result = engine.run(
                    prompt=job.prompt,
                    seed=job.seed,
                    width=width,
                    height=height,
                    steps=job.steps,
                    guidance=job.guidance,
                    on_step=on_step,
                )
            break
        except Exception as exc:  # a pipeline error fails the job, never the worker
            if not engines.is_oom(exc):
                return _fail(job, exc)
            _count_oom(job)
            engines.empty_device_cache()
            log.warning("job %s: out of GPU memory on lane %s (attempt %s)", job.pk, job.lane.name, attempt)
            fallback = job.lane.fallback
            if attempt == 1 and fallback is not None and fallback.enabled and fallback.pk != job.lane_id:
                return _requeue_on_fallback(job, fallback)
            if attempt == 2:
                return _fail(job, exc)

    if job.is_cascade:
        return _store_draft(job, result)
    stored = _store_if(
        job,
        result.image,
        Artifact.Stage.FINAL,
        lambda: job.mark_succeeded(
            run_seconds=result.run_seconds,
            gpu_seconds=result.gpu_seconds,
            peak_memory_bytes=result.peak_memory_bytes,
        ),
    )
    return "succeeded" if stored else "discarded"


def _requeue_on_fallback(job: Job, fallback: Lane) -> str:
    from .actions import dispatch
    from .router import rerouted_fields

    reason = f"out of GPU memory on {job.lane.name}; retried on fallback {fallback.name}"
    moved = Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, worker=job.worker).update(
        state=Job.State.QUEUED,
        worker="",
        gpu_index=None,
        started_at=None,
        progress_step=0,
        **rerouted_fields(job, fallback, reason),
    )
    if not moved:
        return "discarded"
    job.refresh_from_db()
    dispatch(job)
    push.job_state(job)
    return "rerouted after OOM"


def _store_draft(job: Job, result) -> str:
    def to_refine() -> bool:
        fields = {
            "stage": Job.Stage.REFINE_QUEUED,
            "progress_step": job.steps,
            "run_seconds": result.run_seconds,
            "gpu_seconds": result.gpu_seconds,
            "peak_memory_bytes": result.peak_memory_bytes,
        }
        running = Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, worker=job.worker, stage=Job.Stage.DRAFT)
        if not running.update(**fields):
            return False
        for name, value in fields.items():
            setattr(job, name, value)
        return True

    # The draft is pushed (and shown) as soon as it exists.
    if not _store_if(job, result.image, Artifact.Stage.DRAFT, to_refine):
        return "discarded"
    return _queue_refine(job)


def _queue_refine(job: Job) -> str:
    from .admission import BROKER_PRIORITY

    priority = BROKER_PRIORITY[job.priority] if settings.ADMISSION_CONTROL else None
    refine_job.apply_async(args=(job.pk,), queue=job.lane.refine_queue, priority=priority)
    return "draft done"


@shared_task(name="lanes.tasks.refine_job", acks_late=True, ignore_result=True)
def refine_job(job_id: int) -> str:
    """A cascade's refine stage: img2img over the upscaled draft, batched with other waiting jobs."""
    from .admission import release_deferred
    from .batching import refine_batcher
    from .heartbeat import worker_ident

    related = ("model_version", "refine_version", "lane", "experiment_cell")
    job = Job.objects.select_related(*related).prefetch_related("artifacts").filter(pk=job_id).first()
    if job is None:
        return "missing"
    claimed = Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, stage=Job.Stage.REFINE_QUEUED).update(
        stage=Job.Stage.REFINING, worker=worker_ident()
    )
    if not claimed:
        return f"skipped: {job.state}/{job.stage}"
    job.refresh_from_db()
    key = (
        job.refine_version_id or job.model_version_id,
        job.width,
        job.height,
        job.refine_steps,
        job.refine_strength,
        job.guidance,
    )
    try:
        outcome, batch_size = refine_batcher.submit(
            key,
            job,
            max_batch=job.lane.refine_batch_size,
            max_wait_s=job.lane.refine_max_wait_ms / 1000,
            run=_refine_batch,
        )
    except Exception as exc:
        return _fail(job, exc)
    if isinstance(outcome, BaseException):
        return _fail(job, outcome)
    image, run_seconds, gpu_seconds, peak = outcome
    stored = _store_if(
        job,
        image,
        Artifact.Stage.FINAL,
        lambda: job.mark_succeeded(
            run_seconds=(job.run_seconds or 0) + run_seconds,
            gpu_seconds=(job.gpu_seconds or 0) + gpu_seconds,
            peak_memory_bytes=max(job.peak_memory_bytes or 0, peak),
            refine_batch_size=batch_size,
        ),
    )
    if not stored:
        return "discarded"
    release_deferred(job.lane)
    experiments.after_job(job)
    return "succeeded"


def _refine_batch(jobs: list[Job]) -> list:
    """Refine several jobs in one call; on OOM, split the batch once. Returns a result or an error per job."""
    from PIL import Image

    from . import engines

    first = jobs[0]
    upscaler = first.refine_version
    images = []
    for job in jobs:
        draft = next(a for a in job.artifacts.all() if a.stage == Artifact.Stage.DRAFT)
        with Image.open(draft.absolute_path) as img:
            img = img.convert("RGB")
            # img2img refines at the final size; the latent upscaler takes the draft as it is.
            images.append(img if upscaler else img.resize((job.width, job.height), Image.Resampling.BICUBIC))

    def run(indices: list[int]) -> list:
        recorders = [_progress_recorder(jobs[i], offset=jobs[i].steps) for i in indices]

        def on_step(step: int) -> None:
            for record in recorders:
                record(step)

        version = upscaler or first.model_version
        with engines.engines.use(version, width=first.width, height=first.height, batch=len(indices)) as e:
            call = e.upscale if upscaler else e.refine
            result = call(
                prompts=[jobs[i].prompt for i in indices],
                images=[images[i] for i in indices],
                seeds=[jobs[i].seed for i in indices],
                steps=first.refine_steps,
                strength=first.refine_strength,
                guidance=first.guidance,
                on_step=on_step,
            )
        share = len(indices)
        return [
            (image, result.run_seconds, result.gpu_seconds / share, result.peak_memory_bytes) for image in result.images
        ]

    everyone = list(range(len(jobs)))
    try:
        return run(everyone)
    except Exception as exc:
        if not engines.is_oom(exc):
            raise
        for job in jobs:
            _count_oom(job)
        engines.empty_device_cache()
        if len(jobs) == 1:
            return [exc]
        log.warning("refine batch of %s ran out of GPU memory: retrying as two halves", len(jobs))
        results: list = []
        half = len(jobs) // 2
        for part in (everyone[:half], everyone[half:]):
            try:
                results.extend(run(part))
            except Exception as again:
                if not engines.is_oom(again):
                    raise
                results.extend([again] * len(part))
        return results


def _store_if(job: Job, image, stage: str, transition) -> bool:
    """Write the image, then in one transaction make the job's transition and record the artifact.

    When the transition does not apply (the job was cancelled, deleted or requeued while it
    ran: the row says this run does not count), the file is removed and nothing is recorded.
    """
    relative, digest, size = _write_png(job, image, stage)
    with transaction.atomic():
        applied = transition()
        if applied:
            _create_artifact(job, stage, relative, image, digest, size)
            transaction.on_commit(lambda: push.job_state(job))
    if not applied:
        (Path(settings.MEDIA_ROOT) / relative).unlink(missing_ok=True)
    return applied


def _create_artifact(job: Job, stage: str, relative: str, image, digest: str, size: int) -> Artifact:
    artifact = Artifact.objects.create(
        job=job, stage=stage, path=relative, width=image.width, height=image.height, sha256=digest, size_bytes=size
    )
    if stage == Artifact.Stage.FINAL:
        from .actions import start_verification

        start_verification(job, artifact)
    return artifact


def store_png(job: Job, image, stage: str) -> Artifact:
    relative, digest, size = _write_png(job, image, stage)
    return _create_artifact(job, stage, relative, image, digest, size)


@shared_task(name="lanes.tasks.verify_artifact", acks_late=True, ignore_result=True)
def verify_artifact(verification_id: int) -> str:
    """OCR one artifact against its brief's expected text (on the CPU verify queue). Never crashes the worker."""
    from PIL import Image

    from .models import Verification
    from .verification import verify_image

    verification = Verification.objects.select_related("job", "artifact", "lane").filter(pk=verification_id).first()
    if verification is None:
        return "missing"
    if not Verification.objects.filter(pk=verification.pk, status=Verification.Status.PENDING).update(
        status=Verification.Status.RUNNING
    ):
        return "skipped"
    verification.status = Verification.Status.RUNNING
    try:
        with Image.open(verification.artifact.absolute_path) as source:
            source.load()
            image = source.convert("RGB")
    except Exception as exc:  # missing, truncated or not an image at all
        verification.finish(Verification.Status.ERROR, f"unreadable image: {type(exc).__name__}: {exc}")
        push.job_state(verification.job)
        return "error"
    try:
        verdict = verify_image(image, verification.expected, verification.lane or verification.job.lane)
    except Exception as exc:
        log.exception("verification %s failed", verification.pk)
        verification.finish(Verification.Status.ERROR, f"OCR failed: {type(exc).__name__}: {exc}")
        return "error"
    if not verification.finish(verdict.status, verdict.reason, verdict.details(), verdict.ocr_ms):
        return "discarded"  # the job was deleted meanwhile
    push.job_state(verification.job)
    lane = verification.lane
    if verdict.status == Verification.Status.FLAGGED and lane and lane.autofix and verification.source_id is None:
        from .actions import ReviewError, autofix

        try:
            autofix(verification)
        except ReviewError as exc:
            log.info("verification %s: no auto-fix: %s", verification.pk, exc)
    return verdict.status


def _write_png(job: Job, image, stage: str) -> tuple[str, str, int]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    # One file per attempt: a run that lost its claim deletes only its own file.
    relative = f"artifacts/{job.pk}/{stage}-{job.attempts}.png"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return relative, hashlib.sha256(data).hexdigest(), len(data)


@shared_task(name="lanes.tasks.release_deferred_jobs", ignore_result=True)
def release_deferred_jobs() -> int:
    """Beat: release deferred work, oldest first, on every lane with room."""
    from .admission import release_deferred

    lanes = Lane.objects.filter(jobs__state=Job.State.DEFERRED).distinct()
    return sum(len(release_deferred(lane)) for lane in lanes)


@shared_task(name="lanes.tasks.reconcile_jobs", ignore_result=True)
def reconcile_jobs() -> dict[str, int]:
    """Beat: requeue jobs whose worker is gone, and re-send queued jobs nobody picked up.

    Both are safe because workers claim jobs with a conditional UPDATE: a duplicate
    message finds the job no longer queued and does nothing.
    """
    from .actions import dispatch

    now = timezone.now()
    window = timedelta(seconds=settings.WORKER_HEARTBEAT_SECONDS * settings.WORKER_LOST_AFTER_BEATS)
    requeued = failed = redispatched = 0
    lost = Job.objects.running_on_lost_workers(now).filter(started_at__lt=now - window).select_related("lane")
    for job in lost:
        worker = job.worker
        if not job.requeue_from(worker):
            continue
        log.warning("job %s: worker %s lost, now %s", job.pk, worker, job.state)
        if job.state == Job.State.QUEUED:
            requeued += 1
            dispatch(job)
        else:
            failed += 1
        push.job_state(job)
    for job in Job.objects.stuck_queued(now).select_related("lane")[:500]:
        redispatched += 1
        dispatch(job)
    Worker.objects.filter(stopped_at__isnull=True, last_seen__lt=now - window).update(stopped_at=now)
    return {"requeued": requeued, "failed": failed, "redispatched": redispatched}
