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
from django.utils import timezone

from telemetry import push

from .models import Artifact, Job, Worker

log = logging.getLogger(__name__)


@shared_task(name="lanes.tasks.run_job", acks_late=True, ignore_result=True)
def run_job(job_id: int) -> str:
    """Run one job. Safe to deliver twice: only the worker whose conditional UPDATE claims it runs it."""
    from . import engines
    from .heartbeat import worker_ident

    job = Job.objects.select_related("model_version", "lane").filter(pk=job_id).first()
    if job is None:
        return "missing"
    if job.state != Job.State.QUEUED:
        return f"skipped: {job.state}"
    device = engines.current_device()
    if not job.mark_running(worker_ident(), device.gpu_index, device.kind):
        return "skipped: claimed elsewhere"
    push.job_state(job)

    last_saved = time.monotonic()

    def on_step(step: int) -> None:
        nonlocal last_saved
        push.job_progress(job, step)
        if time.monotonic() - last_saved >= settings.PROGRESS_DB_EVERY_SECONDS:
            job.record_progress(step)
            last_saved = time.monotonic()

    try:
        engine = engines.engines.get(job.model_version)
        result = engine.run(
            prompt=job.prompt,
            seed=job.seed,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance=job.guidance,
            on_step=on_step,
        )
    except Exception as exc:  # a pipeline error fails the job, never the worker
        log.warning("job %s failed: %s", job.pk, exc, exc_info=not isinstance(exc, engines.CheckpointError))
        if job.mark_failed(f"{type(exc).__name__}: {exc}"):
            push.job_state(job)
        return "failed"

    relative, digest, size = _write_png(job, result.image)
    with transaction.atomic():
        succeeded = job.mark_succeeded(
            run_seconds=result.run_seconds,
            gpu_seconds=result.gpu_seconds,
            peak_memory_bytes=result.peak_memory_bytes,
        )
        if succeeded:
            Artifact.objects.create(
                job=job,
                stage=Artifact.Stage.FINAL,
                path=relative,
                width=result.image.width,
                height=result.image.height,
                sha256=digest,
                size_bytes=size,
            )
            transaction.on_commit(lambda: push.job_state(job))
    if not succeeded:
        # Cancelled, deleted or requeued while running: the row says this run does not count.
        (Path(settings.MEDIA_ROOT) / relative).unlink(missing_ok=True)
        return "discarded"
    return "succeeded"


def _write_png(job: Job, image) -> tuple[str, str, int]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    # One file per attempt: a run that lost its claim deletes only its own file.
    relative = f"artifacts/{job.pk}/final-{job.attempts}.png"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return relative, hashlib.sha256(data).hexdigest(), len(data)


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
