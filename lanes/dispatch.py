"""Sending work to the workers. Every task of the job pipeline is sent from here, by name.

Tasks are sent only for committed rows (callers use transaction.on_commit) and carry ids.
Sending twice is safe: a worker claims its row with a conditional UPDATE.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from telemetry import push

from . import fairshare, quotas, windows
from .admission import pressure
from .models import Adapter, Job, Lane, LaneWindow, ModelVersion, Priority, Worker

log = logging.getLogger(__name__)

# Celery priorities on the Redis transport: lower runs first.
BROKER_PRIORITY = {Priority.CRITICAL: 0, Priority.STANDARD: 3, Priority.BACKGROUND: 6}


def broker_priority(priority: str) -> int | None:
    return BROKER_PRIORITY[Priority(priority)] if settings.ADMISSION_CONTROL else None


# What a broker that is down raises when a message is sent (kombu's, redis-py's, the socket's).
BROKER_DOWN = (OperationalError, RedisError, OSError)


def queue_for(job: Job) -> str:
    """The queue a job's message goes to: its lane's, or, for a hosted engine's job (which waits on the
    network, not a GPU), the hosted workers' queue."""
    return settings.HOSTED_QUEUE if job.model_version.is_hosted else job.lane.queue


def dispatch(job: Job, stamped: bool = False) -> bool:
    """Send a committed job to its lane's queue; False (and `job.queueing_down` set) if the broker is down.

    The job stays queued in the database, and reconcile sends it once the broker is back.

    `stamped`: the row already holds the send's time (a new job's insert does, for the send right after
    its commit), so a send that works writes nothing, and one that fails clears it. (An UPDATE after the
    send would also race the worker's claim of the same row.)"""
    queue = queue_for(job)
    try:
        current_app.send_task(
            "lanes.tasks.run_job", args=(job.pk,), queue=queue, priority=broker_priority(job.priority)
        )
    except BROKER_DOWN as exc:
        log.warning("job %s saved but not queued (broker unreachable: %s); reconcile will send it", job.pk, exc)
        job.queueing_down = True
        if stamped:  # unless a later send (reconcile's) has stamped it since
            Job.objects.filter(pk=job.pk, dispatched_at=job.dispatched_at).update(dispatched_at=None)
            job.dispatched_at = None
        return False
    if not stamped:
        job.mark_dispatched()
    return True


def broker_reachable(timeout: int = 1) -> bool:
    """Whether the broker answers now (the dashboard says so when it does not)."""
    try:
        with current_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except BROKER_DOWN:
        return False
    return True


def dispatch_after_commit(job: Job) -> None:
    """Once the transaction commits: send the job back into its queue and tell its watchers."""

    def send() -> None:
        dispatch(job)
        push.job_state(job)

    transaction.on_commit(send)


def queue_refine(job: Job) -> None:
    """Send a cascade's drafted job to its lane's refine queue."""
    current_app.send_task(
        "lanes.tasks.refine_job", args=(job.pk,), queue=job.lane.refine_queue, priority=broker_priority(job.priority)
    )


def queue_verification(verification_id: int) -> None:
    current_app.send_task("lanes.tasks.verify_artifact", args=(verification_id,), queue=settings.VERIFY_QUEUE)


def validate_version(version: ModelVersion) -> None:
    current_app.send_task(
        "lanes.rollout.validate_version",
        args=(version.pk,),
        queue=settings.HOSTED_QUEUE if version.is_hosted else settings.CELERY_TASK_DEFAULT_QUEUE,
    )


def validate_adapter(adapter: Adapter) -> None:
    current_app.send_task("lanes.tasks.validate_adapter", args=(adapter.pk,), queue=settings.CELERY_TASK_DEFAULT_QUEUE)


RELEASE_SCAN = 2000  # deferred jobs of one lane considered per release (fair order needs every team's first ones)


def release_deferred(lane: Lane, limit: int = 100, now=None) -> list[Job]:
    """Release deferred jobs into the lane's free slots, in fair-share order (lanes.fairshare; oldest
    first with FAIR_SHARE off); returns the jobs released.

    What may go depends on why it waits: a saturated lane's work whenever there is room; background
    work held for the off-peak (and work a team's soft quota deferred) while a release window of the
    lane is open; quota-deferred work also once its team is back under its soft limits.
    Runs after every job, so the common case (nothing deferred) is a single cheap query.
    """
    deferred = Job.objects.filter(lane=lane, state=Job.State.DEFERRED)
    if not deferred.exists():  # cheap: the ordered read of whole rows below costs ~10x as much
        return []
    load = pressure(lane)
    # Pressure has dropped when a slot is free, not merely below the defer threshold:
    # released work must not queue up in front of critical briefs still arriving.
    room = min(min(load.capacity, lane.defer_depth) - load.depth, limit)
    if room <= 0:  # checked before the deferred rows are read: during a burst most passes end here
        return []
    waiting = list(deferred.select_related("lane", "model_version").order_by("submitted_at", "pk")[:RELEASE_SCAN])
    if not waiting:
        return []
    off_peak = windows.open_window(lane, LaneWindow.Mode.RELEASE, now) is not None
    if not off_peak:
        held = {job.team_id for job in waiting if job.deferral == Job.Deferral.QUOTA}
        back_under = quotas.under_soft_limits(held, now) if held else set()
        # A team back under its soft limits gets one quota-deferred job per pass: the next pass (after each
        # job, and beat's) checks its limits again, so releasing cannot overshoot them.
        once: set = set()
        waiting = [
            job for job in waiting
            if job.deferral not in (Job.Deferral.QUOTA, Job.Deferral.OFF_PEAK)
            or (job.deferral == Job.Deferral.QUOTA and job.team_id in back_under and not _seen(once, job.team_id))
        ]  # fmt: skip
    if fairshare.enabled():
        waiting = fairshare.release_order(lane, waiting)
    released: list[Job] = []
    for job in waiting[:room]:
        # Conditional: a concurrent releaser (beat, another worker) may have taken it.
        if job.release():
            dispatch_after_commit(job)
            released.append(job)
    return released


def _seen(seen: set, key) -> bool:
    """Whether `key` was seen before (and remember it)."""
    if key in seen:
        return True
    seen.add(key)
    return False


def release_all_deferred() -> int:
    """Release deferred work, in fair-share order, on every lane with room."""
    lanes = Lane.objects.filter(jobs__state=Job.State.DEFERRED).distinct()
    return sum(len(release_deferred(lane)) for lane in lanes)


def reconcile() -> dict[str, int]:
    """Requeue jobs whose worker is gone, and re-send queued jobs nobody picked up.

    Both are safe because workers claim jobs with a conditional UPDATE: a duplicate
    message finds the job no longer queued and does nothing.
    """
    now = timezone.now()
    window = timedelta(seconds=settings.WORKER_HEARTBEAT_SECONDS * settings.WORKER_LOST_AFTER_BEATS)
    requeued = failed = redispatched = 0
    lost = (
        Job.objects.running_on_lost_workers(now)
        .filter(started_at__lt=now - window)
        .select_related("lane", "model_version")
    )
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
    for job in Job.objects.stuck_queued(now).select_related("lane", "model_version")[:500]:
        redispatched += 1
        dispatch(job)
    revalidated = requeue_lost_validations(now)
    Worker.objects.filter(stopped_at__isnull=True, last_seen__lt=now - window).update(stopped_at=now)
    return {"requeued": requeued, "failed": failed, "redispatched": redispatched, "revalidated": revalidated}


def requeue_lost_validations(now) -> int:
    """Versions whose validating worker is gone (killed mid-hash or mid-smoke-render) go back to
    staged and are validated again; without this they would read "validating" for ever."""
    alive = Worker.objects.alive(now).values("ident")
    lost = ModelVersion.objects.filter(status=ModelVersion.Status.VALIDATING).exclude(validated_on="")
    requeued = 0
    for version in lost.exclude(validated_on__in=alive):
        worker = version.validated_on
        if ModelVersion.objects.filter(
            pk=version.pk, status=ModelVersion.Status.VALIDATING, validated_on=worker
        ).update(status=ModelVersion.Status.STAGED):
            try:
                validate_version(version)
            except (OperationalError, RedisError):  # the broker is away: the next reconcile tries again
                ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.STAGED).update(
                    status=ModelVersion.Status.VALIDATING
                )
                continue
            log.warning("version %s: validating worker %s lost, validating again", version.name, worker)
            requeued += 1
    return requeued
