"""Shadow renders through the API: start and stop (ops and admins), and the comparison with production
(admins: it describes briefs of every team). Refusals are 422 with the reason; nothing is applied."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpResponse
from ninja import Field, Router, Schema

from accounts.access import require_role
from accounts.models import Role
from experiments import shadow as comparison
from lanes import shadow
from lanes.changes import ConflictError, ControlError
from lanes.models import Lane, ModelVersion, Shadow

from ..access import get_lane_for_user
from .core import BodyIn, ProblemError, SlugPath, errors, text
from .lanes import etag, expected_revision

router = Router(tags=["shadows"])

PAIRS_LISTED = 48


class ShadowIn(BodyIn):
    version: str = text(..., max_length=100)
    percent: int = Field(..., ge=1, le=100, description="Share of the lane's finished routed briefs rendered again.")


class ComparisonOut(Schema):
    metric: str
    n: int
    estimate: float | None
    low: float | None
    high: float | None
    p_value: float | None
    significant: bool
    sentence: str


class ArmOut(Schema):
    arm: str
    jobs: int
    succeeded: int
    failed: int
    run_p50_s: float | None
    run_p95_s: float | None
    device_seconds_per_image: float | None
    pass_rate: float | None
    mean_edit_distance: float | None


class RenderOut(Schema):
    job: int
    state: str
    run_s: float | None
    device_seconds: float | None
    verdict: str
    edit_distance: float | None
    image_sha256: str


class PairOut(Schema):
    prompt: str
    seed: int
    production: RenderOut
    shadow: RenderOut


class GateOut(Schema):
    passed: bool
    why: str


class ShadowOut(Schema):
    id: int
    lane: str
    version: str
    percent: int
    running: bool
    started_by: str
    started_at: datetime
    stopped_at: datetime | None
    stopped_reason: str
    skipped: int
    pairs: int
    finished_pairs: int
    arms: list[ArmOut]
    comparisons: list[ComparisonOut]
    gate: GateOut | None = Field(None, description="Whether this shadow passes (on the version's latest shadow).")
    recent_pairs: list[PairOut]


def _render(row) -> dict:
    return {
        "job": row.job_id, "state": row.state, "run_s": row.run_s, "device_seconds": row.gpu_s,
        "verdict": row.verdict, "edit_distance": row.edit_distance, "image_sha256": row.image_sha256,
    }  # fmt: skip


def shadow_out(run: Shadow) -> dict:
    report = comparison.report(run)
    latest = Shadow.objects.filter(lane_id=run.lane_id, version_id=run.version_id).values_list("pk", flat=True).first()
    gate = comparison.judge(run.lane, run.version, report) if latest == run.pk else None
    return {
        "id": run.pk, "lane": run.lane.name, "version": run.version.name, "percent": run.percent,
        "running": run.is_running, "started_by": run.started_by.get_username(), "started_at": run.started_at,
        "stopped_at": run.stopped_at, "stopped_reason": run.stopped_reason, "skipped": run.skipped,
        "pairs": len(report.pairs), "finished_pairs": len(report.finished),
        "arms": [
            {"arm": s.arm, "jobs": s.jobs, "succeeded": s.succeeded, "failed": s.failed, "run_p50_s": s.run_p50,
             "run_p95_s": s.run_p95, "device_seconds_per_image": s.gpu_s_per_image, "pass_rate": s.pass_rate,
             "mean_edit_distance": s.mean_edit_distance}
            for s in report.summaries
        ],
        "comparisons": [
            {"metric": c.metric, "n": c.n, "estimate": c.estimate, "low": c.low, "high": c.high,
             "p_value": c.p_value, "significant": c.significant, "sentence": c.sentence}
            for c in report.comparisons
        ],
        "gate": {"passed": gate[0], "why": gate[1]} if gate else None,
        "recent_pairs": [
            {"prompt": p.production_job.prompt, "seed": p.production.seed, "production": _render(p.production),
             "shadow": _render(p.shadow)}
            for p in report.pairs[:PAIRS_LISTED]
        ],
    }  # fmt: skip


def _latest(lane: Lane) -> Shadow:
    run = Shadow.objects.filter(lane=lane).select_related("lane", "version", "started_by").first()
    if run is None:
        raise ProblemError(404, f"No version has shadowed lane {lane.name}.")
    return run


def _change(request, response: HttpResponse, lane: Lane, action) -> dict:
    revision = expected_revision(request)
    try:
        action(lane, revision)
    except ConflictError as exc:
        raise ProblemError(412 if revision is not None else 409, str(exc)) from None
    except ControlError as exc:
        raise ProblemError(422, str(exc), exc.errors or None) from None
    lane.refresh_from_db(fields=["revision"])
    response["ETag"] = etag(lane)
    return shadow_out(_latest(lane))


@router.get("/lanes/{name}/shadow", response={200: ShadowOut, **errors()})
def get_shadow(request, name: SlugPath):
    """The lane's latest shadow: production vs shadow figures, the paired comparisons, the gate, recent pairs."""
    lane = get_lane_for_user(request, name)
    require_role(request.user, Role.ADMIN, "Shadow renders are shown to admins.")
    return shadow_out(_latest(lane))


@router.post("/lanes/{name}/shadow", response={200: ShadowOut, **errors(409, 412)})
def start_shadow(request, name: SlugPath, body: ShadowIn, response: HttpResponse):
    """Render `percent` of the lane's finished briefs again on a version, as hidden background work."""
    lane = get_lane_for_user(request, name)
    version = ModelVersion.objects.filter(name=body.version).first()
    if version is None:
        raise ProblemError(422, f"No model version named {body.version!r}.", {"version": "Unknown version."})
    return _change(
        request, response, lane, lambda lane, rev: shadow.start(lane, version, body.percent, request.user, rev)
    )


@router.post("/lanes/{name}/shadow/stop", response={200: ShadowOut, **errors(409, 412)})
def stop_shadow(request, name: SlugPath, response: HttpResponse):
    """Stop the lane's shadow; its shadow jobs not started yet are cancelled."""
    lane = get_lane_for_user(request, name)
    return _change(
        request,
        response,
        lane,
        lambda lane, rev: shadow.stop(lane, request.user, rev, reason="stopped through the API"),
    )
