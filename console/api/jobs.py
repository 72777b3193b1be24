"""Briefs and jobs: submit (idempotent), read, list, cancel, re-render, download each stage's image."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from django.http import HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from ninja import Field, Query, Router, Schema
from pydantic import field_validator

from accounts.access import has_role
from accounts.models import Role
from lanes.actions import BriefRejected, cancel_job, rerender_job, submit_brief
from lanes.models import Job

from ..access import get_job_for_user
from ..views import ImagePruned, png_response
from . import idempotency
from .core import BodyIn, IdPath, Input, Name, ProblemError, errors, text

router = Router(tags=["jobs"])

SEED_MAX = 2**63 - 1
PAGE_MAX = 100


class BriefIn(BodyIn):
    prompt: str = text(..., min_length=1, max_length=100_000, description="What to render.")
    intent: str = text(..., min_length=1, max_length=50, description="Routes the brief to a lane (see GET /lanes).")
    expected_text: str = text("", max_length=10_000, description="Text the image must show; checked by OCR.")
    priority: Literal["critical", "standard", "background"] | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    steps: int | None = Field(None, ge=1, le=1000, description="Within the lane's bounds.")
    guidance: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=8, le=8192)
    height: int | None = Field(None, ge=8, le=8192)
    adapters: list[Name] = Field([], max_length=16, description="LoRA adapters the lane offers, by name.")


class Admission(Schema):
    decision: str = Field(..., description="admitted, deferred, rerouted or rejected")
    reason: str
    retry_after: int | None = None


class StageProgress(Schema):
    name: str
    step: int
    steps: int
    percent: int


class Image(Schema):
    stage: str
    url: str
    width: int
    height: int
    sha256: str
    pruned_at: datetime | None = Field(None, description="When retention deleted the file (the URL answers 410).")


class VerificationOut(Schema):
    id: int
    status: str
    reason: str
    decision: str


class Timings(Schema):
    submitted_at: datetime
    dispatched_at: datetime | None = Field(
        None,
        description="When the job's message was last sent to its queue. A new job's is its admission: the message "
        "leaves as its row commits (reconcile sends it again if it never did). Empty while deferred, or when the "
        "broker was down for its first send.",
    )
    started_at: datetime | None
    finished_at: datetime | None
    run_seconds: float | None
    load_seconds: float | None  # a cold start: the model load the job waited for, apart from its run
    gpu_seconds: float | None  # device-seconds: CPU-seconds on a CPU worker
    queued_seconds: float | None


class JobOut(Schema):
    id: int
    url: str
    state: str
    stage: str
    intent: str
    priority: str
    lane: str
    requested_lane: str | None
    version: str
    version_note: str = Field(
        description="Why the job runs on another version than it was routed to (a stopped canary, a "
        "rollback); empty if it does not."
    )
    refine_version: str | None
    prompt: str
    expected_text: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    adapters: list[dict]
    admission: Admission
    progress: list[StageProgress]
    percent: int
    attempts: int
    error: str
    timings: Timings
    api_cost: float
    images: list[Image]
    verification: VerificationOut | None
    rerender_of: int | None


class JobPage(Schema):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next (older) page.")


class JobFilters(Input):
    state: Literal["queued", "deferred", "running", "succeeded", "failed", "cancelled", "rejected"] | None = None
    lane: str | None = text(None, max_length=50)
    intent: str | None = text(None, max_length=50)
    team: str | None = text(None, max_length=100, description="Team name (ops and admins).")
    since: str | None = text(
        None, max_length=40, description="Submitted at or after (ISO 8601).", json_schema_extra={"format": "date-time"}
    )
    cursor: str | None = text(None, max_length=20, pattern=r"^[0-9]+$")
    limit: int = Field(25, ge=1, le=PAGE_MAX)

    @field_validator("since")
    @classmethod
    def _iso_8601(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                aware_utc(value)
            except (ValueError, OverflowError):
                raise ValueError("must be an ISO 8601 date and time, e.g. 2026-11-30T09:00:00Z") from None
        return value


def aware_utc(text: str) -> datetime:
    """An ISO 8601 instant in UTC (a naive one is in TIME_ZONE); ValueError or OverflowError past the calendar."""
    parsed = parse_datetime(text)
    if parsed is None:
        raise ValueError(text)
    aware = parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)
    return aware.astimezone(UTC)


class RerenderIn(BodyIn):
    intent: str | None = text(None, max_length=50, description="Default: the job's own intent.")


def job_out(job: Job, artifacts: list | None = None, verifications: list | None = None) -> dict:
    """The job as the API shows it; its images and checks are read from the job unless given."""
    artifacts = sorted(job.artifacts.all() if artifacts is None else artifacts, key=lambda a: a.created_at)
    verifications = sorted(
        job.verifications.all() if verifications is None else verifications, key=lambda v: v.created_at
    )
    latest = verifications[-1] if verifications else None
    queued = (job.started_at - job.submitted_at).total_seconds() if job.started_at else None
    return {
        "id": job.pk,
        "url": reverse("api-v1:get_job", kwargs={"job_id": job.pk}),
        "state": job.state,
        "stage": job.stage,
        "intent": job.intent,
        "priority": job.priority,
        "lane": job.lane.name,
        "requested_lane": job.requested_lane.name if job.requested_lane_id else None,
        "version": job.model_version.name,
        "version_note": job.version_note,
        "refine_version": job.refine_version.name if job.refine_version_id else None,
        "prompt": job.prompt,
        "expected_text": job.expected_text,
        "seed": job.seed,
        "width": job.width,
        "height": job.height,
        "steps": job.steps,
        "guidance": job.guidance,
        "adapters": job.adapters,
        "admission": {
            "decision": job.admission,
            "reason": job.admission_reason,
            "retry_after": getattr(job, "retry_after", None),
        },
        "progress": [
            {"name": s["name"], "step": s["done"], "steps": s["steps"], "percent": s["percent"]}
            for s in job.stage_progress
        ],
        "percent": job.progress_percent,
        "attempts": job.attempts,
        "error": job.error,
        "timings": {
            "submitted_at": job.submitted_at,
            "dispatched_at": job.dispatched_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "run_seconds": job.run_seconds,
            "load_seconds": job.load_seconds,
            "gpu_seconds": job.gpu_seconds,
            "queued_seconds": queued,
        },
        "api_cost": job.api_cost,
        "images": [
            {
                "stage": a.stage,
                "url": reverse("api-v1:get_job_image", kwargs={"job_id": job.pk, "stage": a.stage}),
                "width": a.width,
                "height": a.height,
                "sha256": a.sha256,
                "pruned_at": a.pruned_at,
            }
            for a in artifacts
        ],
        "verification": {"id": latest.pk, "status": latest.status, "reason": latest.reason, "decision": latest.decision}
        if latest
        else None,
        "rerender_of": job.rerender_of_id,
    }


def _as_admitted(job: Job) -> dict:
    """The job as admission left it, from the row just written rather than read again: a new job has no
    images or checks yet (GET /jobs/{id} shows it as it goes on)."""
    return JobOut.model_validate(job_out(job, artifacts=[], verifications=[])).model_dump(mode="json")


def _submitted(job: Job) -> tuple[int, dict]:
    """202 and the job; 429 and a problem for a brief admission refused (its REJECTED job is kept)."""
    body = _as_admitted(job)
    if job.state == Job.State.REJECTED:
        detail = f"Not accepted now: {job.admission_reason}. Retry in {job.retry_after} s."
        return 429, {"detail": detail, "retry_after": job.retry_after or 1, "job": body["id"]}
    return 202, body


def _after_commit(request, made: list[Job], status: int, body: dict) -> tuple[int, dict]:
    """The job is dispatched when its transaction commits: if the broker refused it, say so (503)."""
    if made and made[0].queueing_down and status == 202:
        job = made[0]
        detail = f"Queueing is down: your brief is saved as job {job.pk} and will be sent when it is back."
        status, body = 503, {"detail": detail, "retry_after": 30, "job": job.pk, "url": body["url"]}
        idempotency.amend(request, status, body)
    return status, body


def _answer(response: HttpResponse, status: int, body: dict) -> tuple[int, dict]:
    if status in (429, 503):
        raise ProblemError(status, body["detail"], headers={"Retry-After": str(body["retry_after"])})
    response["Location"] = body["url"]
    return status, body


@router.post("/jobs", response={202: JobOut, **errors(409, 503)}, url_name="submit_brief")
def submit(request, brief: BriefIn, response: HttpResponse):
    """Submit a brief. 202 with the job and admission's decision; 429 with `Retry-After` when the
    lane is past its hard cap. Send `Idempotency-Key` to make retries safe."""

    made: list[Job] = []

    def make() -> tuple[int, dict]:
        try:
            made.append(submit_brief(request.user, **brief.model_dump(exclude_unset=True)))
        except BriefRejected as exc:
            raise ProblemError(422, str(exc), exc.errors) from None
        return _submitted(made[0])

    return _answer(response, *_after_commit(request, made, *idempotency.once(request, make, response)))


@router.get("/jobs", response={200: JobPage, **errors()}, url_name="list_jobs")
def list_jobs(request, filters: Query[JobFilters]):
    """Jobs you may see, newest first; `cursor` pages on to older ones."""
    jobs = (
        Job.objects.visible_to(request.user)
        .select_related("lane", "model_version", "refine_version", "requested_lane")
        .prefetch_related("artifacts", "verifications")
        .order_by("-id")
    )
    if filters.state:
        jobs = jobs.filter(state=filters.state)
    if filters.lane:
        jobs = jobs.filter(lane__name=filters.lane)
    if filters.intent:
        jobs = jobs.filter(intent=filters.intent)
    if filters.team:
        if not has_role(request.user, Role.OPS):
            raise ProblemError(403, "Only ops and admins filter by team: you see your own team's jobs.")
        jobs = jobs.filter(team__name=filters.team)
    if filters.since:
        jobs = jobs.filter(submitted_at__gte=aware_utc(filters.since))
    if filters.cursor:
        if int(filters.cursor) > SEED_MAX:
            raise ProblemError(422, "The cursor is not one this API gave out.")
        jobs = jobs.filter(id__lt=int(filters.cursor))
    page = list(jobs[: filters.limit + 1])
    more = len(page) > filters.limit
    page = page[: filters.limit]
    return {"items": [job_out(j) for j in page], "next_cursor": str(page[-1].pk) if more else None}


@router.get("/jobs/{job_id}", response={200: JobOut, **errors()}, url_name="get_job")
def get_job(request, job_id: IdPath):
    return job_out(get_job_for_user(request, job_id))


@router.post("/jobs/{job_id}/cancel", response={200: JobOut, **errors(409)}, url_name="cancel_job")
def cancel(request, job_id: IdPath):
    """Cancel a job that has not started (queued or deferred); 409 otherwise."""
    job = get_job_for_user(request, job_id)
    if not cancel_job(job):
        raise ProblemError(409, f"Job {job.pk} is {job.state}; only queued or deferred jobs can be cancelled.")
    return job_out(get_job_for_user(request, job_id))


@router.post("/jobs/{job_id}/rerender", response={202: JobOut, **errors(409, 503)}, url_name="rerender_job")
def rerender(request, job_id: IdPath, response: HttpResponse, body: RerenderIn | None = None):
    """The same brief again with a new seed, as a new job (linked by `rerender_of`)."""
    job = get_job_for_user(request, job_id)
    intent = body.intent if body and body.intent else job.intent

    made: list[Job] = []

    def make() -> tuple[int, dict]:
        try:
            made.append(rerender_job(job, request.user, intent))
        except BriefRejected as exc:
            raise ProblemError(422, str(exc), exc.errors) from None
        return _submitted(made[0])

    return _answer(response, *_after_commit(request, made, *idempotency.once(request, make, response)))


@router.get(
    "/jobs/{job_id}/images/{stage}.png",
    response={200: None, **errors(410)},
    url_name="get_job_image",
    openapi_extra={"responses": {200: {"description": "The PNG", "content": {"image/png": {}}}}},
)
def image(request, job_id: IdPath, stage: Literal["draft", "final", "fixed"]):
    """A stage's PNG: draft, final, or fixed (text overlaid after review); 410 once retention pruned it."""
    try:
        return png_response(get_job_for_user(request, job_id), stage)
    except ImagePruned as exc:
        raise ProblemError(410, str(exc)) from None
