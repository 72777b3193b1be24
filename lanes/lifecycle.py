"""A job's run on a worker, from its claim to its stored image.

`run` claims a queued job (a conditional UPDATE, so a duplicate message does nothing),
waits for a slot of its lane on this GPU, renders under the memory budget, and stores the
image with the job's transition in one transaction. A cascade stores its draft and queues
the refine stage, which `refine` runs batched with other waiting jobs. A running job may pause
at a step boundary for a higher class waiting for its slot (lanes.preemption). An out-of-memory
error moves the job to its lane's fallback once, or splits a refine batch once.
Afterwards deferred work is released, and the finish is announced (lanes.signals).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from PIL import Image

from telemetry import push
from webhooks import outbox

from . import adapters as lora
from . import artifacts, engines, fairshare, hosted, rollout
from .batching import refine_batcher
from .dispatch import dispatch, queue_for, queue_refine, release_deferred
from .heartbeat import worker_ident
from .models import Adapter, Artifact, CheckpointError, Job, Lane, ModelVersion, Worker
from .preemption import JobStopped, Need, Preemptor
from .review import start_verification
from .router import rerouted_fields
from .signals import announce_finished
from .slots import Slot, slots

log = logging.getLogger(__name__)

# What every run reads. The lane's fallback (and its version) is read only after an out-of-memory error:
# joining them here would add ~70 columns to the ~130 Django compiles this query for, on every job.
RELATED = ("model_version", "lane")
CLAIMED_ELSEWHERE = "skipped: claimed elsewhere"


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


def use_engine(version: ModelVersion, *, width: int, height: int, job: Job | None = None) -> AbstractContextManager:
    """The engine that renders with a version: a hosted API, or a local pipeline under the memory budget
    (a cold start shows the job as loading its model, and counts the load apart from the run)."""
    if version.is_hosted:
        return hosted.use(version)
    if job is None:
        return engines.engine_cache.use(version, width=width, height=height)

    def loading() -> None:
        # A cold load for a job: first make sure the files are still the registered ones.
        engines.check_files(version)
        if job.mark_loading():
            push.job_state(job)

    def loaded(seconds: float) -> None:
        job.mark_loaded(seconds)
        push.job_state(job)

    return engines.engine_cache.use(version, width=width, height=height, on_loading=loading, on_loaded=loaded)


def lora_refs(job: Job) -> list[engines.LoraRef]:
    """The job's pinned LoRA adapters, with their files (a missing file fails the job by name)."""
    if not job.adapters:
        return []
    rows = Adapter.objects.in_bulk([entry["id"] for entry in job.adapters])
    refs = []
    for entry in job.adapters:
        adapter = rows.get(entry["id"])
        if adapter is None:
            raise CheckpointError(f"LoRA adapter {entry.get('name')!r} was deleted after the job was submitted.")
        refs.append(engines.LoraRef(adapter.lora_name, adapter.file_path(), float(entry["weight"])))
    return refs


def _count_oom(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(oom_count=F("oom_count") + 1)
    Worker.objects.filter(ident=worker_ident()).update(oom_count=F("oom_count") + 1)
    job.oom_count += 1


def _fail(job: Job, exc: BaseException) -> str:
    expected = isinstance(exc, CheckpointError | engines.MemoryBudgetError | hosted.HostedError)
    log.warning("job %s failed: %s", job.pk, exc, exc_info=not expected)
    if job.mark_failed(f"{type(exc).__name__}: {exc}"):
        push.job_state(job)
    return "failed"


def _load(job_id: int) -> Job | None:
    """The job with what running it reads, or None. Not `.first()`: its ORDER BY makes Django hash every
    selected column (~200 with these joins), which cost more than the query itself."""
    try:
        return Job.objects.select_related(*RELATED).get(pk=job_id)
    except Job.DoesNotExist:
        return None


def run(job_id: int, delivered_to: str | None = None) -> str:
    """Run a job (a cascade's draft stage), or, with fair share, the waiting job of its lane and class
    whose team's turn it is (lanes.fairshare). Safe to deliver twice: only a conditional claim runs it.

    `delivered_to` is the queue the message came from. A job moved to a version of the other kind while
    it waited (a local checkpoint ↔ a hosted engine, when a canary stops or a lane rolls back) has its
    message on the wrong queue: it is sent on to the right one, for a worker that can run it.
    """
    job = _load(job_id)
    if job is None:
        return "missing"
    if delivered_to is not None and delivered_to != queue_for(job):
        if job.state != Job.State.QUEUED:  # nor does it run another job's turn here: they have their own messages
            return f"skipped: {job.state}"
        dispatch(job)
        log.info("job %s moved to queue %s (its version is now %s)", job.pk, queue_for(job), job.model_version.name)
        return f"moved to {queue_for(job)}"
    fair = fairshare.enabled()
    if job.state != Job.State.QUEUED and not (fair and fairshare.in_turn(job)):
        return f"skipped: {job.state}"
    with slots.acquire(job.lane_id, job.priority, info=Need.of(job)) as slot:
        ran, outcome = _run_in_turn(job, fair, slot)
    release_deferred(job.lane)
    announce_finished(ran)
    return outcome


def _run_in_turn(job: Job, fair: bool, slot: Slot) -> tuple[Job, str]:
    """Claim and run the job whose turn it is (the message's own job without fair share); the next in
    turn if another worker claimed it first.

    Every message must run a job while any is queued (each queued job has one message, and one that
    ran in another's turn leaves its own message to run the next): when every job in turn was claimed
    elsewhere meanwhile, the turn is read again. Each lost claim is a job another worker took, so this
    ends when the queue is empty or a claim succeeds.
    """
    if not fair:
        return job, _run_claimed(job, slot)
    outcome = ""
    while turn := fairshare.in_turn(job):
        for pk in turn:
            chosen = job if pk == job.pk else _load(pk)
            if chosen is None:
                continue
            slot.info = Need.of(chosen)  # what a job preempting for this slot would weigh against
            outcome = _run_claimed(chosen, slot)
            if outcome != CLAIMED_ELSEWHERE:
                if chosen is not job:
                    log.info("job %s ran in the turn of job %s (fair share)", chosen.pk, job.pk)
                return chosen, outcome
    if not outcome:  # nothing was in turn: say what became of the message's own job (read only now)
        job.refresh_from_db(fields=["state"])
        outcome = f"skipped: {job.state}"
    return job, outcome


def _run_claimed(job: Job, slot: Slot) -> str:
    device = engines.current_device()
    if not job.mark_running(worker_ident(), device.gpu_index, device.kind, device.name):
        return CLAIMED_ELSEWHERE
    push.job_state(job)
    if job.is_cascade and job.draft_artifact() is not None:
        # Requeued after its worker was lost between the stages: the draft is kept, refine again.
        Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(stage=Job.Stage.REFINE_QUEUED)
        job.stage = Job.Stage.REFINE_QUEUED
        push.job_state(job)
        queue_refine(job)
        return "draft done"

    scale = job.refine_scale if job.is_cascade else 1
    width, height = job.width // scale, job.height // scale
    record = _progress_recorder(job)
    preemptor = Preemptor(job, slot)

    def on_step(step: int) -> None:
        record(step)
        preemptor(step)

    for attempt in (1, 2):
        try:
            with use_engine(job.model_version, width=width, height=height, job=job) as engine, preemptor.rendering():
                # Step 0: a job about to start while a higher class renders here waits before its first
                # step (its prompt encoding and first step would otherwise share the device with that render).
                preemptor(0)
                paused_before_call = preemptor.paused_seconds
                result = engine.run(
                    prompt=job.prompt,
                    seed=job.seed,
                    width=width,
                    height=height,
                    steps=job.steps,
                    guidance=job.guidance,
                    on_step=on_step,
                    adapters=lora_refs(job),
                )
            break
        except JobStopped as exc:  # cancelled while paused: unwinding the call freed its memory
            log.info("%s", exc)
            return "stopped while paused"
        except Exception as exc:  # a pipeline error fails the job, never the worker
            if not engines.is_oom(exc):
                if isinstance(exc, engines.LoadError):
                    return _version_failed_to_load(job, exc)
                return _fail(job, exc)
            _count_oom(job)
            engines.empty_device_cache()
            log.warning("job %s: out of GPU memory on lane %s (attempt %s)", job.pk, job.lane.name, attempt)
            fallback = job.lane.fallback
            if attempt == 1 and fallback is not None and fallback.enabled and fallback.pk != job.lane_id:
                return _requeue_on_fallback(job, fallback)
            if attempt == 2:
                return _fail(job, exc)

    # Time paused at a step boundary inside the call is not run time (the call's clock does not see a
    # pause before it starts, nor an earlier attempt's).
    paused_in_call = preemptor.paused_seconds - paused_before_call
    result.run_seconds = max(0.0, result.run_seconds - paused_in_call)
    result.gpu_seconds = max(0.0, result.gpu_seconds - paused_in_call)
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
            api_cost=result.api_cost,
        ),
    )
    return "succeeded" if stored else "discarded"


def _version_failed_to_load(job: Job, exc: engines.LoadError) -> str:
    """The job's version would not load: it is taken out of service (rollout.quarantine), and the job,
    when the policy routed it there, is retried once on the version now serving its lane rather than
    failing for the version's fault. An experiment's job is pinned to its arm: it fails."""
    version = job.model_version
    reason = f"{version.name} failed to load on {job.worker}: {exc}"
    rollout.quarantine(version, reason)
    serving = Lane.objects.select_related("active_version").get(pk=job.lane_id).active_version
    if not job.routed or job.version_note or serving.pk == version.pk or not serving.is_deployable:
        return _fail(job, exc)
    adapters, missing = lora.for_job(job.lane, serving, [entry["name"] for entry in job.adapters])
    note = f"Retried on {serving.name}: {version.name} failed to load and was taken out of service."
    if missing:
        note += f" Without LoRA {', '.join(missing)}: not offered for {serving.name}."
    if not _requeue(job, model_version=serving, adapters=adapters, version_note=note[:300]):
        return "discarded"
    log.warning("job %s: %s; retried on %s", job.pk, reason, serving.name)
    return f"retried on {serving.name}"


def _requeue_on_fallback(job: Job, fallback: Lane) -> str:
    reason = f"out of GPU memory on {job.lane.name}; retried on fallback {fallback.name}"
    if not _requeue(job, **rerouted_fields(job, fallback, reason)):
        return "discarded"
    return "rerouted after OOM"


def _requeue(job: Job, **fields) -> bool:
    """Put a job this worker is running back in the queue with `fields` changed, and send it (False if it
    is no longer this worker's)."""
    moved = Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, worker=job.worker).update(
        state=Job.State.QUEUED, worker="", gpu_index=None, started_at=None, progress_step=0, **fields
    )
    if not moved:
        return False
    job.refresh_from_db()
    dispatch(job)
    push.job_state(job)
    return True


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
    queue_refine(job)
    return "draft done"


def refine(job_id: int) -> str:
    """A cascade's refine stage: img2img over the upscaled draft, batched with other waiting jobs."""
    related = ("model_version", "refine_version", "lane")
    try:
        job = Job.objects.select_related(*related).prefetch_related("artifacts").get(pk=job_id)
    except Job.DoesNotExist:
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
        json.dumps(job.adapters, sort_keys=True),  # one call applies one adapter set
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
        outcome = exc
    if isinstance(outcome, BaseException):
        failed = _fail(job, outcome)
        announce_finished(job)
        return failed
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
    announce_finished(job)
    return "succeeded"


def _refine_batch(jobs: list[Job]) -> list:
    """Refine several jobs in one call; on OOM, split the batch once. Returns a result or an error per job."""
    first = jobs[0]
    upscaler = first.refine_version
    images = []
    for job in jobs:
        draft = next(a for a in job.artifacts.all() if a.stage == Artifact.Stage.DRAFT)
        with Image.open(draft.absolute_path) as opened:
            img = opened.convert("RGB")
            # img2img refines at the final size; the latent upscaler takes the draft as it is.
            as_is = upscaler is not None and upscaler.spec.upscale
            images.append(img if as_is else img.resize((job.width, job.height), Image.Resampling.BICUBIC))

    def run(indices: list[int]) -> list:
        recorders = [_progress_recorder(jobs[i], offset=jobs[i].steps) for i in indices]

        def on_step(step: int) -> None:
            for record in recorders:
                record(step)

        version = upscaler or first.model_version

        def loaded(seconds: float) -> None:  # a cold start of the refine model: every job in the call waited
            for i in indices:
                jobs[i].mark_loaded(seconds)

        with engines.engine_cache.use(
            version, width=first.width, height=first.height, batch=len(indices), on_loaded=loaded
        ) as e:
            common: dict[str, Any] = dict(
                prompts=[jobs[i].prompt for i in indices],
                images=[images[i] for i in indices],
                seeds=[jobs[i].seed for i in indices],
                steps=first.refine_steps,
                strength=first.refine_strength,
                guidance=first.guidance,
                on_step=on_step,
            )
            if version.spec.upscale:
                result = e.upscale(**common)
            else:  # img2img: the job's own version keeps its adapters; another (a refiner) was not fitted to them
                own = version.pk == first.model_version_id
                result = e.refine(**common, adapters=lora_refs(first) if own else [])
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
    """Write the image, then in one transaction make the job's transition, record the artifact and
    (for a final image) start its verification.

    When the transition does not apply (the job was cancelled, deleted or requeued while it
    ran: the row says this run does not count), the file is removed and nothing is recorded.
    """
    written = artifacts.write_png(job, image, stage)
    with transaction.atomic():
        applied = transition()
        if applied:
            # First of the commit's hooks, so the watcher's page hears of it before the checks are sent off;
            # robust, so a push that fails cannot keep the hooks after it (the OCR check, webhooks) from running.
            transaction.on_commit(lambda: push.job_state(job), robust=True)
            artifact = artifacts.record(job, stage, written)
            if stage == Artifact.Stage.FINAL:
                start_verification(job, artifact)
            if job.state == Job.State.SUCCEEDED:
                outbox.emit("job.succeeded", job.webhook_data, job.team_id)
    if not applied:
        written.discard()
    return applied
