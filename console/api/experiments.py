"""A/B experiments: admins create them from YAML; creatives read their team's status and results."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any, Literal

from django.http import HttpResponse
from ninja import Query, Router, Schema

from accounts.access import require_role
from accounts.models import Role
from experiments import definition as definitions
from experiments import results, runner
from experiments.models import Experiment
from lanes.models import Job

from ..access import get_experiment_for_user
from . import idempotency
from .core import SLUG, BodyIn, ProblemError, SlugPath, errors, text

router = Router(tags=["experiments"])


class ArmOut(Schema):
    name: str
    lane: str
    version: str


class ExperimentOut(Schema):
    name: str
    url: str
    state: str
    stopped_reason: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    arms: list[ArmOut]
    prompts: int
    seeds: list[int]
    jobs_done: int
    jobs_total: int


class ResultsOut(Schema):
    experiment: str
    state: str
    baseline: str
    summary: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    cells: list[dict[str, Any]]


class ExperimentIn(BodyIn):
    definition: str = text(..., max_length=1_000_000, description="The experiment's YAML.")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: statistics that have none are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def experiment_out(experiment: Experiment, rows=None) -> dict:
    rows = results.cell_results(experiment) if rows is None else rows
    return {
        "name": experiment.name, "url": f"/api/v1/experiments/{experiment.name}", "state": experiment.state,
        "stopped_reason": experiment.stopped_reason, "created_by": experiment.created_by.get_username(),
        "created_at": experiment.created_at, "finished_at": experiment.finished_at,
        "arms": [{"name": a.name, "lane": a.lane.name, "version": a.model_version.name}
                 for a in experiment.arms.select_related("lane", "model_version")],
        "prompts": len(experiment.prompts), "seeds": experiment.seeds,
        "jobs_done": sum(1 for r in rows if r.state in Job.TERMINAL), "jobs_total": len(rows),
    }  # fmt: skip


@router.get("/experiments", response={200: list[ExperimentOut], **errors()})
def list_experiments(request):
    items = Experiment.objects.visible_to(request.user).select_related("created_by")
    return [experiment_out(e) for e in items]


@router.post("/experiments", response={201: ExperimentOut, **errors(409)})
def create(request, body: ExperimentIn, response: HttpResponse):
    """Create and start an experiment from its YAML definition (admins); 422 lists each problem with its line."""
    require_role(request.user, Role.ADMIN, "Experiments are run by admins.")

    def make() -> tuple[int, dict]:
        try:
            definition = definitions.parse(body.definition)
        except definitions.ExperimentError as exc:
            raise ProblemError(
                422, "The experiment was not created.", {str(i): e for i, e in enumerate(exc.errors, 1)}
            ) from None
        experiment = runner.create(request.user, definition)
        return 201, ExperimentOut.model_validate(experiment_out(experiment)).model_dump(mode="json")

    return idempotency.once(request, make, response)


@router.get("/experiments/{name}", response={200: ExperimentOut, **errors()})
def get_experiment(request, name: SlugPath):
    return experiment_out(get_experiment_for_user(request, name))


@router.get("/experiments/{name}/results", response={200: ResultsOut, **errors()})
def get_results(request, name: SlugPath, baseline: str | None = Query(None, pattern=SLUG, max_length=50)):
    """Per-arm summary, paired comparisons against the baseline arm (default: the first), and every cell."""
    experiment = get_experiment_for_user(request, name)
    names = [arm.name for arm in experiment.arms.all()]
    if baseline is not None and baseline not in names:
        raise ProblemError(422, f"No arm named {baseline!r}; the arms are {', '.join(names)}.")
    baseline = baseline or names[0]
    rows = results.cell_results(experiment)
    comparisons = [
        {"arm": arm, **dataclasses.asdict(c)}
        for arm in names
        if arm != baseline
        for c in results.compare(rows, baseline, arm)
    ]
    return _finite({
        "experiment": experiment.name, "state": experiment.state, "baseline": baseline,
        "summary": [dataclasses.asdict(s) for s in results.summarize(rows, names)],
        "comparisons": comparisons, "cells": [dataclasses.asdict(r) for r in rows],
    })  # fmt: skip


@router.post("/experiments/{name}/{action}", response={200: ExperimentOut, **errors(409)})
def control(request, name: SlugPath, action: Literal["pause", "resume", "cancel"]):
    """Pause (no new jobs), resume, or cancel (and its waiting jobs) an experiment (admins)."""
    experiment = get_experiment_for_user(request, name, manage=True)
    done = {"pause": runner.pause, "resume": runner.resume, "cancel": runner.cancel}[action](experiment, request.user)
    if done is None or done is False:
        experiment.refresh_from_db()
        raise ProblemError(409, f"{experiment.name} is {experiment.state}: cannot {action} it.")
    return experiment_out(get_experiment_for_user(request, name))
