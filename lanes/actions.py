"""Writes that touch several models and have side effects (dispatch, events)."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from telemetry import push

from . import admission
from .models import Job, Priority, team_of
from .rollout import pick_version
from .router import RoutingError, cascade_fields, check_parameters, clamp_to, route_intent


class BriefRejected(Exception):
    """A brief that cannot become a job; `errors` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def submit_brief(
    owner,
    *,
    prompt: str,
    intent: str,
    expected_text: str = "",
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    priority: str | None = None,
    model_version=None,
    lane=None,
) -> Job:
    """Validate a brief, run admission, store the job and dispatch it once the row is committed.

    A brief refused by admission (hard cap) is stored too, as a REJECTED job saying why;
    invalid input raises BriefRejected and stores nothing.
    """
    prompt = (prompt or "").strip()
    errors: dict[str, str] = {}
    if not prompt:
        errors["prompt"] = "Describe the image: the prompt is empty."
    elif len(prompt) > settings.PROMPT_MAX_LENGTH:
        errors["prompt"] = f"The prompt is {len(prompt)} characters; the limit is {settings.PROMPT_MAX_LENGTH}."
    expected_text = (expected_text or "").strip()
    if len(expected_text) > settings.EXPECTED_TEXT_MAX_LENGTH:
        errors["expected_text"] = f"At most {settings.EXPECTED_TEXT_MAX_LENGTH} characters."
    if seed is not None and not 0 <= seed < 2**63:
        errors["seed"] = "The seed must be between 0 and 2^63 - 1."
    if priority is not None and priority not in Priority.values:
        errors["priority"] = f"Unknown priority {priority!r}."
    if lane is None:
        try:
            routed = route_intent(intent)
        except RoutingError as exc:
            errors[exc.field] = str(exc)
            raise BriefRejected(errors) from None
        lane, default_priority = routed.lane, routed.route.priority
    else:  # sent to a lane by name (an experiment arm), not by intent
        default_priority = lane.default_priority
    params = {
        "steps": lane.default_steps if steps is None else steps,
        "guidance": lane.default_guidance if guidance is None else guidance,
        "width": lane.default_width if width is None else width,
        "height": lane.default_height if height is None else height,
    }
    errors.update(check_parameters(lane, **params))
    if errors:
        raise BriefRejected(errors)
    priority = priority or default_priority

    with transaction.atomic():
        try:
            decision = admission.decide(lane, priority)
        except admission.NoLaneAvailable as exc:
            raise BriefRejected({"intent": str(exc)}) from None
        if decision.lane != lane:
            params = clamp_to(decision.lane, **params)
        job = Job.objects.create(
            owner=owner,
            prompt=prompt,
            expected_text=expected_text,
            intent=intent,
            priority=priority,
            requested_lane=lane,
            lane=decision.lane,
            team_id=team_of(owner),
            model_version=model_version or pick_version(decision.lane),
            state=decision.state,
            admission=decision.admission,
            admission_reason=decision.reason[:300],
            seed=secrets.randbelow(2**31) if seed is None else seed,
            **cascade_fields(decision.lane),
            finished_at=timezone.now() if decision.state == Job.State.REJECTED else None,
            **params,
        )
        job.retry_after = decision.retry_after
        if job.state == Job.State.QUEUED:
            transaction.on_commit(lambda: dispatch(job))
        transaction.on_commit(lambda: push.job_state(job))
    return job


def dispatch(job: Job) -> None:
    """Send a committed job to its lane's queue. Safe to repeat: the worker claims jobs conditionally."""
    from .tasks import run_job

    priority = admission.BROKER_PRIORITY[job.priority] if settings.ADMISSION_CONTROL else None
    run_job.apply_async(args=(job.pk,), queue=job.lane.queue, priority=priority)
    job.mark_dispatched()


def cancel_job(job: Job) -> bool:
    """Cancel a job that has not started; False if it already had."""
    cancelled = job.cancel()
    if cancelled:
        transaction.on_commit(lambda: push.job_state(job))
    return cancelled


def start_verification(job: Job, artifact, source=None):
    """Queue the OCR check of a job's image (after commit), when its lane verifies typography."""
    from .models import Verification
    from .verification import expected_texts

    if not job.lane.verify:
        return None
    expected = expected_texts(job.expected_text, job.prompt)
    verification = Verification.objects.create(
        job=job,
        artifact=artifact,
        lane=job.lane,
        model_version=job.model_version,
        source=source,
        expected=expected,
        status=Verification.Status.PENDING if expected else Verification.Status.NOT_APPLICABLE,
        reason="" if expected else "the brief expects no text",
        finished_at=None if expected else timezone.now(),
    )
    if expected:
        from .tasks import verify_artifact

        transaction.on_commit(lambda: verify_artifact.apply_async(args=(verification.pk,), queue=settings.VERIFY_QUEUE))
    return verification


class ReviewError(Exception):
    pass


def approve(verification, by) -> None:
    if not verification.decide(verification.Decision.APPROVED, by):
        raise ReviewError(f"Verification {verification.pk} was already reviewed ({verification.decision}).")


def reject(verification, by) -> None:
    if not verification.decide(verification.Decision.REJECTED, by):
        raise ReviewError(f"Verification {verification.pk} was already reviewed ({verification.decision}).")


def autofix(verification, by=None):
    """Overlay the expected text on the flagged image as a new artifact, then verify that again."""
    from PIL import Image

    from .models import Artifact, Verification
    from .tasks import store_png
    from .verification import overlay_text

    job = verification.job
    if verification.status != Verification.Status.FLAGGED:
        raise ReviewError("Only a flagged image can be auto-fixed.")
    if job.artifacts.filter(stage=Artifact.Stage.FIXED).exists():
        raise ReviewError(f"Job {job.pk} already has an auto-fixed image.")
    failing = [s for s in verification.details.get("scores", []) if not s["passed"]]
    with Image.open(verification.artifact.absolute_path) as source:
        image = source.convert("RGB")
    if len(failing) == 1:
        image = overlay_text(image, failing[0]["expected"], failing[0]["box"])
    else:
        image = overlay_text(image, " ".join(s["expected"] for s in failing), None)
    with transaction.atomic():
        if not verification.decide(Verification.Decision.FIXED, by):
            raise ReviewError(f"Verification {verification.pk} was already reviewed ({verification.decision}).")
        artifact = store_png(job, image, Artifact.Stage.FIXED)
        followup = start_verification(job, artifact, source=verification)
    return followup


def rerender(verification, by, intent: str) -> Job:
    """A new job for the same brief with a new seed, on the lane the chosen intent routes to."""
    from .models import Verification

    job = verification.job
    with transaction.atomic():
        if not verification.decide(Verification.Decision.RERENDERED, by):
            raise ReviewError(f"Verification {verification.pk} was already reviewed ({verification.decision}).")
        new = submit_brief(job.owner, prompt=job.prompt, expected_text=job.expected_text, intent=intent)
        Job.objects.filter(pk=new.pk).update(rerender_of=job)
        new.rerender_of = job
    return new
