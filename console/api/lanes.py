"""Lanes for ops (modes, limits) and their rollouts for admins. Each lane carries its revision as
an ETag: send it back as `If-Match` and a write based on a stale read gets 412, like the console's 409."""

from __future__ import annotations

from typing import Any, Literal

from django.http import HttpResponse
from ninja import Field, Query, Router, Schema

from accounts.access import require_role
from accounts.models import Role
from lanes import control, progressive, rollout
from lanes.changes import ConflictError, ControlError
from lanes.models import Lane, ModelVersion, Rollout, RolloutPlan, with_live_counts
from lanes.stats import WINDOWS, lane_stats

from ..access import get_lane_for_user
from .core import BodyIn, Input, ProblemError, SlugPath, errors, text

router = Router(tags=["lanes"])

Window = Literal["5m", "1h", "24h"]
assert set(Window.__args__) <= set(WINDOWS)  # type: ignore[attr-defined]


class VersionStats(Schema):
    version: str | None
    finished: int
    succeeded: int
    failed: int
    error_rate: float | None
    throughput_per_min: float
    run_p50_s: float | None
    run_p95_s: float | None
    queue_p95_s: float | None
    gpu_seconds_per_image: float | None
    cost_per_image: float | None
    pass_rate: float | None


class LaneOut(Schema):
    name: str
    description: str
    mode: str
    revision: int
    queue: str
    active_version: str
    canary_version: str | None
    canary_percent: int
    fallback: str | None
    max_concurrency: int
    defer_depth: int
    hard_cap: int
    preemptible: bool
    latency_slo_ms: int
    default_priority: str
    steps: dict
    size: dict
    cascade: bool
    verify: bool
    queued: int
    running: int
    deferred: int
    stats: list[VersionStats]


class StatsQuery(Input):
    window: Window = "5m"


class ModeIn(BodyIn):
    mode: Literal["enabled", "draining", "disabled"]


class LimitsIn(BodyIn):
    max_concurrency: int | None = Field(None, ge=1, le=1000)
    defer_depth: int | None = Field(None, ge=1, le=1_000_000)
    hard_cap: int | None = Field(None, ge=1, le=1_000_000)
    preemptible: bool | None = None
    latency_slo_ms: int | None = Field(None, ge=1, le=86_400_000)
    canary_window_minutes: int | None = Field(None, ge=1, le=10_080)
    canary_min_samples: int | None = Field(None, ge=1, le=1_000_000)
    canary_max_error_rate_increase: float | None = Field(None, ge=0, le=1)
    canary_max_p95_ratio: float | None = Field(None, ge=1, le=100)
    canary_max_flag_rate_increase: float | None = Field(None, ge=0, le=1)


class LaneVersionIn(BodyIn):
    version: str = text(..., max_length=100)


class CanaryIn(BodyIn):
    version: str = text(..., max_length=100)
    percent: int = Field(..., ge=1, le=99)


class ModeOut(Schema):
    lane: LaneOut
    jobs_moved: int


def _stats(s) -> dict:
    return {
        "version": s.version.name if s.version else None,
        "finished": s.finished, "succeeded": s.succeeded, "failed": s.failed,
        "error_rate": s.error_rate, "throughput_per_min": s.throughput_per_min,
        "run_p50_s": s.run_s.get(50), "run_p95_s": s.run_s.get(95), "queue_p95_s": s.queue_s.get(95),
        "gpu_seconds_per_image": s.gpu_seconds_per_image, "cost_per_image": s.cost_per_image,
        "pass_rate": s.pass_rate,
    }  # fmt: skip


def lane_out(lane: Lane, stats: list) -> dict:
    with_live_counts([lane])
    return {
        "name": lane.name, "description": lane.description, "mode": lane.mode, "revision": lane.revision,
        "queue": lane.queue, "active_version": lane.active_version.name,
        "canary_version": lane.canary_version.name if lane.canary_version_id else None,
        "canary_percent": lane.canary_percent, "fallback": lane.fallback.name if lane.fallback_id else None,
        "max_concurrency": lane.max_concurrency, "defer_depth": lane.defer_depth, "hard_cap": lane.hard_cap,
        "preemptible": lane.preemptible, "latency_slo_ms": lane.latency_slo_ms,
        "default_priority": lane.default_priority,
        "steps": {"default": lane.default_steps, "min": lane.min_steps, "max": lane.max_steps},
        "size": {
            "width": lane.default_width, "height": lane.default_height, "min": lane.min_size, "max": lane.max_size
        },
        "cascade": lane.cascade, "verify": lane.verify,
        "queued": lane.queued, "running": lane.running, "deferred": lane.deferred,
        "stats": [_stats(s) for s in stats if s.lane.pk == lane.pk],
    }  # fmt: skip


def etag(lane: Lane) -> str:
    return f'"{lane.revision}"'


def expected_revision(request) -> int | None:
    """The revision named by `If-Match` (None without the header); 412 for one that names none."""
    header = request.headers.get("If-Match", "").strip()
    if not header or header == "*":
        return None
    value = header.removeprefix("W/").strip('"')
    if not value.isdigit() or len(value) > 9:
        raise ProblemError(412, f"If-Match {header!r} is not an ETag this API gave out.")
    return int(value)


def _with_etag(response: HttpResponse, lane: Lane, body: dict) -> dict:
    response["ETag"] = etag(lane)
    return body


def _change(request, lane: Lane, action):
    """Run a lane change; a stale revision is 412 when If-Match named it, else 409 (changed meanwhile)."""
    revision = expected_revision(request)
    try:
        return action(lane, revision)
    except ConflictError as exc:
        raise ProblemError(412 if revision is not None else 409, str(exc)) from None
    except ControlError as exc:
        raise ProblemError(409, str(exc), exc.errors or None) from None


def _answer(request, response: HttpResponse, name: str) -> dict:
    lane = get_lane_for_user(request, name)
    return _with_etag(response, lane, lane_out(lane, lane_stats("5m")))


def _version(name: str) -> ModelVersion:
    version = ModelVersion.objects.filter(name=name).first()
    if version is None:
        raise ProblemError(422, f"No model version named {name!r}.", {"version": "Unknown version."})
    return version


@router.get("/lanes", response={200: list[LaneOut], **errors()})
def list_lanes(request, query: Query[StatsQuery]):
    """Every lane with its live counts and, per version, the window's percentiles, error rate and cost."""
    require_role(request.user, Role.OPS, "Ops and admins only.")
    lanes = list(Lane.objects.select_related("active_version", "canary_version", "fallback").order_by("name"))
    stats = lane_stats(query.window)
    return [lane_out(lane, stats) for lane in lanes]


@router.get("/lanes/{name}", response={200: LaneOut, **errors()})
def get_lane(request, name: SlugPath, query: Query[StatsQuery], response: HttpResponse):
    lane = get_lane_for_user(request, name)
    return _with_etag(response, lane, lane_out(lane, lane_stats(query.window)))


@router.post("/lanes/{name}/mode", response={200: ModeOut, **errors(409, 412)})
def set_mode(request, name: SlugPath, body: ModeIn, response: HttpResponse):
    """Enable, drain or disable a lane; disabling moves its waiting jobs down the fallback chain."""
    lane = get_lane_for_user(request, name)
    lane, moved = _change(request, lane, lambda lane, rev: control.set_mode(lane, body.mode, request.user, rev))
    return _with_etag(response, lane, {"lane": lane_out(lane, lane_stats("5m")), "jobs_moved": moved})


@router.patch("/lanes/{name}/limits", response={200: LaneOut, **errors(409, 412)})
def update_limits(request, name: SlugPath, body: LimitsIn, response: HttpResponse):
    """Change concurrency, admission thresholds or canary guards; fields left out stay as they are."""
    lane = get_lane_for_user(request, name)
    values = body.model_dump(exclude_none=True)
    if not values:
        raise ProblemError(422, "Send at least one limit to change.")
    _change(request, lane, lambda lane, rev: control.update_limits(lane, values, request.user, rev))
    return _answer(request, response, name)


@router.post("/lanes/{name}/activate", response={200: LaneOut, **errors(409, 412)})
def activate(request, name: SlugPath, body: LaneVersionIn, response: HttpResponse):
    """Serve a validated version on the lane (admins)."""
    lane = get_lane_for_user(request, name, deploy=True)
    version = _version(body.version)
    _change(request, lane, lambda lane, rev: rollout.activate(lane, version, request.user, rev))
    return _answer(request, response, name)


@router.post("/lanes/{name}/canary", response={200: LaneOut, **errors(409, 412)})
def start_canary(request, name: SlugPath, body: CanaryIn, response: HttpResponse):
    """Send `percent` of the lane's new jobs to a version; beat judges it against the active one (admins)."""
    lane = get_lane_for_user(request, name, deploy=True)
    version = _version(body.version)
    _change(request, lane, lambda lane, rev: rollout.start_canary(lane, version, body.percent, request.user, rev))
    return _answer(request, response, name)


@router.post("/lanes/{name}/canary/end", response={200: LaneOut, **errors(409, 412)})
def end_canary(request, name: SlugPath, response: HttpResponse):
    lane = get_lane_for_user(request, name, deploy=True)
    _change(
        request, lane, lambda lane, rev: rollout.end_canary(lane, request.user, rev, reason="ended through the API")
    )
    return _answer(request, response, name)


@router.post("/lanes/{name}/promote", response={200: LaneOut, **errors(409, 412)})
def promote(request, name: SlugPath, response: HttpResponse):
    """Make the canary the active version (admins)."""
    lane = get_lane_for_user(request, name, deploy=True)
    _change(request, lane, lambda lane, rev: rollout.promote(lane, request.user, rev))
    return _answer(request, response, name)


@router.post("/lanes/{name}/rollback", response={200: LaneOut, **errors(409, 412)})
def rollback(request, name: SlugPath, response: HttpResponse):
    """Back to the version the lane served before (admins)."""
    lane = get_lane_for_user(request, name, deploy=True)
    _change(request, lane, lambda lane, rev: rollout.rollback(lane, request.user, rev))
    return _answer(request, response, name)


# Progressive rollouts (lanes/progressive.py): the plan and the rollout's step and analysis.


class PlanIn(BodyIn):
    steps: list[dict[str, Any]] = Field(..., description="[{percent: 1-99 increasing, min_samples, min_minutes}]")
    thresholds: dict[str, Any] = Field(default_factory=dict, description="Threshold name -> limit; others default.")
    require_shadow: bool = Field(False, description="No rollout starts until the version's shadow on the lane passes.")


class StepOut(Schema):
    percent: int
    min_samples: int | None = None
    min_minutes: float | None = None


class PlanOut(Schema):
    steps: list[StepOut]
    thresholds: dict[str, float]
    require_shadow: bool
    describe: str


class MetricOut(Schema):
    name: str
    label: str
    kind: str
    canary: float | None
    baseline: float | None
    threshold: float
    canary_n: int
    baseline_n: int
    needed: int
    status: str


class RolloutRunOut(Schema):
    version: str
    baseline: str
    state: str
    step: int = Field(..., description="1-based: the step now running")
    steps: list[StepOut]
    percent: int
    paused: bool
    reason: str
    started_at: str
    step_started_at: str
    ended_at: str | None
    analysed_at: str | None
    analysis: list[MetricOut]


class RolloutOut(Schema):
    lane: str
    revision: int
    plan: PlanOut | None
    rollout: RolloutRunOut | None


class RolloutStartIn(BodyIn):
    version: str = text(..., max_length=100)


def rollout_out(lane: Lane) -> dict:
    lane.refresh_from_db()
    plan = RolloutPlan.objects.filter(lane=lane).first()
    latest = Rollout.objects.filter(lane=lane).select_related("version", "baseline").first()
    run = None
    if latest is not None:
        running = latest.state == Rollout.State.RUNNING
        run = {
            "version": latest.version.name, "baseline": latest.baseline.name, "state": latest.state,
            "step": latest.step + 1, "steps": latest.steps, "percent": lane.canary_percent if running else 0,
            "paused": latest.paused, "reason": latest.reason, "started_at": latest.started_at.isoformat(),
            "step_started_at": latest.step_started_at.isoformat(),
            "ended_at": latest.ended_at.isoformat() if latest.ended_at else None,
            "analysed_at": latest.analysed_at.isoformat() if latest.analysed_at else None,
            "analysis": latest.analysis,
        }  # fmt: skip
    return {
        "lane": lane.name,
        "revision": lane.revision,
        "plan": {
            "steps": plan.steps,
            "thresholds": plan.thresholds,
            "require_shadow": plan.require_shadow,
            "describe": plan.describe(),
        }
        if plan
        else None,  # fmt: skip
        "rollout": run,
    }


def _rollout_answer(response: HttpResponse, lane: Lane) -> dict:
    body = rollout_out(lane)
    return _with_etag(response, lane, body)


@router.get("/lanes/{name}/rollout", response={200: RolloutOut, **errors()})
def get_rollout(request, name: SlugPath, response: HttpResponse):
    """The lane's plan and its latest rollout: step, share, and each metric against its threshold."""
    lane = get_lane_for_user(request, name)
    return _rollout_answer(response, lane)


@router.put("/lanes/{name}/rollout/plan", response={200: RolloutOut, **errors(409, 412)})
def put_plan(request, name: SlugPath, body: PlanIn, response: HttpResponse):
    """Set the lane's rollout plan (admins); a bad plan is 422 with every problem, and nothing is saved."""
    lane = get_lane_for_user(request, name, deploy=True)
    plan, problems = progressive.check_plan(body.model_dump())
    if problems:
        raise ProblemError(422, "; ".join(message for _, message in problems), dict(problems))
    problem = progressive.baseline_problem(lane)
    if problem:
        raise ProblemError(422, f"No plan saved: {problem}.", {"plan": problem})
    _change(request, lane, lambda lane, rev: progressive.save_plan(lane, plan, request.user, rev))
    return _rollout_answer(response, lane)


@router.post("/lanes/{name}/rollout", response={200: RolloutOut, **errors(409, 412)})
def start_rollout(request, name: SlugPath, body: RolloutStartIn, response: HttpResponse):
    """Roll a validated version out by the lane's plan (admins): the canary at the first step's share."""
    lane = get_lane_for_user(request, name, deploy=True)
    version = _version(body.version)
    _change(request, lane, lambda lane, rev: progressive.start(lane, version, request.user, rev))
    return _rollout_answer(response, lane)


RolloutAction = Literal["pause", "resume", "skip", "abort"]


@router.post("/lanes/{name}/rollout/{action}", response={200: RolloutOut, **errors(409, 412)})
def rollout_action(request, name: SlugPath, action: RolloutAction, response: HttpResponse):
    """Pause (hold the step), resume, skip to the next step (or promote) or abort the running rollout (ops)."""
    lane = get_lane_for_user(request, name)
    act = {"pause": progressive.pause, "resume": progressive.resume, "skip": progressive.skip,
           "abort": progressive.abort}[action]  # fmt: skip
    _change(request, lane, lambda lane, rev: act(lane, request.user, rev))
    return _rollout_answer(response, lane)
