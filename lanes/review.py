"""Verification and review of a job's final image: the OCR check, then a person's decision.

A final image of a lane that verifies typography gets a Verification, checked on the CPU
verify queue. A flagged one waits for review: approve, reject, auto-fix (the expected
text overlaid, then checked again) or re-render (a new job with a new seed).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone
from PIL import Image

from telemetry import push

from . import artifacts, dispatch
from .actions import rerender_job
from .models import Artifact, Job, Verification
from .typeset import overlay_text
from .verification import expected_texts, verify_image

log = logging.getLogger(__name__)


class ReviewError(Exception):
    pass


def start_verification(job: Job, artifact: Artifact, source: Verification | None = None) -> Verification | None:
    """Queue the OCR check of a job's image (after commit), when its lane verifies typography."""
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
        transaction.on_commit(lambda: dispatch.queue_verification(verification.pk), robust=True)
    return verification


def verify(verification_id: int) -> str:
    """OCR one artifact against its brief's expected text. Never crashes the worker."""
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
        try:
            autofix(verification)
        except ReviewError as exc:
            log.info("verification %s: no auto-fix: %s", verification.pk, exc)
    return verdict.status


def _decide(verification: Verification, decision: str, by) -> None:
    if not verification.decide(decision, by):
        raise ReviewError(f"Verification {verification.pk} was already reviewed ({verification.decision}).")


def approve(verification: Verification, by) -> None:
    _decide(verification, Verification.Decision.APPROVED, by)


def reject(verification: Verification, by) -> None:
    _decide(verification, Verification.Decision.REJECTED, by)


def autofix(verification: Verification, by=None) -> Verification | None:
    """Overlay the expected text on the flagged image as a new artifact, then verify that again."""
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
        _decide(verification, Verification.Decision.FIXED, by)
        artifact = artifacts.store_png(job, image, Artifact.Stage.FIXED)
        followup = start_verification(job, artifact, source=verification)
    return followup


def rerender(verification: Verification, by, intent: str) -> Job:
    """A new job for the same brief with a new seed, on the lane the chosen intent routes to."""
    with transaction.atomic():
        _decide(verification, Verification.Decision.RERENDERED, by)
        return rerender_job(verification.job, by, intent)
