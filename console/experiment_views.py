"""A/B experiments in the console: define, follow live, compare, export, and canary the winner."""

import csv
import dataclasses
import io
import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.access import admin_required, has_role
from accounts.models import Role
from experiments import definition as definitions
from experiments import results, runner
from experiments.models import Experiment
from lanes import rollout
from lanes.changes import ControlError
from lanes.models import Job

from .access import get_experiment_for_user, get_lane_for_user
from .forms import ExperimentCanaryForm, ExperimentForm

# The New experiment form starts from the README's example (one file, so they cannot drift apart).
EXAMPLE = (settings.BASE_DIR / "examples" / "sale-posters.yaml").read_text()


@login_required
@require_GET
def experiment_list(request):
    items = Experiment.objects.visible_to(request.user).select_related("created_by").prefetch_related("arms")
    return render(request, "console/experiments.html", {"experiments": items})


@admin_required
@require_http_methods(["GET", "POST"])
def experiment_new(request):
    form = ExperimentForm(request.POST or None, request.FILES or None, initial={"definition": EXAMPLE})
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        try:
            definition = definitions.parse(form.cleaned_data["text"], form.cleaned_data["extra_prompts"])
        except definitions.ExperimentError as exc:
            errors = exc.errors
        else:
            experiment = runner.create(request.user, definition)
            messages.success(request, f"Experiment {experiment.name} started: {definition.job_count} background jobs.")
            return redirect("experiment-detail", name=experiment.name)
    status = 400 if request.method == "POST" else 200
    return render(request, "console/experiment_new.html", {"form": form, "errors": errors}, status=status)


def _results(experiment, baseline_name: str | None):
    arms = list(experiment.arms.select_related("lane", "model_version"))
    names = [arm.name for arm in arms]
    baseline = baseline_name if baseline_name in names else names[0]
    rows = results.cell_results(experiment)
    comparisons = []
    for arm in names:
        if arm == baseline:
            continue
        comparisons.append({"arm": arm, "results": results.compare(rows, baseline, arm)})
    grid = []
    for index, prompt in enumerate(experiment.prompts):
        samples = []
        for sample, seed in enumerate(experiment.seeds):
            cells = {r.arm: r for r in rows if r.prompt_index == index and r.sample_index == sample}
            samples.append({"seed": seed, "cells": [cells.get(name) for name in names]})
        grid.append({"prompt": prompt, "samples": samples})
    done = sum(1 for r in rows if r.state in Job.TERMINAL)
    return {
        "arms": arms,
        "baseline": baseline,
        "rows": rows,
        "summary": results.summarize(rows, names),
        "comparisons": comparisons,
        "grid": grid,
        "done": done,
        "total": len(rows),
    }


@login_required
@require_GET
def experiment_detail(request, name: str):
    experiment = get_experiment_for_user(request, name)
    context = {"experiment": experiment, **_results(experiment, request.GET.get("baseline"))}
    context["can_manage"] = has_role(request.user, Role.ADMIN)
    context["canary_form"] = ExperimentCanaryForm()
    template = "console/experiment.html"
    if request.htmx:
        template += "#experiment-results"
    return render(request, template, context)


EXPORT_FIELDS = [f.name for f in dataclasses.fields(results.CellResult)] + ["prompt", "expected_text"]


def _export_rows(experiment) -> list[dict]:
    rows = []
    for result in results.cell_results(experiment):
        prompt = experiment.prompts[result.prompt_index]
        rows.append(
            {**dataclasses.asdict(result), "prompt": prompt["prompt"], "expected_text": prompt["expected_text"]}
        )
    return rows


@login_required
@require_GET
def experiment_export(request, name: str, fmt: str):
    if fmt not in ("csv", "json"):
        raise Http404("Export as .csv or .json.")
    experiment = get_experiment_for_user(request, name)
    rows = _export_rows(experiment)
    if fmt == "json":
        payload = {"experiment": experiment.name, "seeds": experiment.seeds, "cells": rows}
        response = HttpResponse(json.dumps(payload, indent=1), content_type="application/json")
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{experiment.name}.{fmt}"'
    return response


@admin_required
@require_POST
def experiment_control(request, name: str, action: str):
    if action not in ("pause", "resume", "cancel"):
        raise Http404("No such experiment action.")
    experiment = get_experiment_for_user(request, name, manage=True)
    if action == "pause":
        ok, message = (
            runner.pause(experiment, request.user),
            f"{experiment.name} paused: no new jobs are submitted.",
        )
    elif action == "resume":
        ok, message = runner.resume(experiment, request.user), f"{experiment.name} resumed."
    else:
        cancelled = runner.cancel(experiment, request.user)
        ok, message = cancelled is not None, f"{experiment.name} cancelled, and {cancelled} waiting jobs with it."
    if ok:
        messages.success(request, message)
    else:
        experiment.refresh_from_db()
        messages.error(request, f"{experiment.name} is {experiment.state}: cannot {action} it.")
    return redirect("experiment-detail", name=experiment.name)


@admin_required
@require_POST
def experiment_canary(request, name: str):
    """Start a canary of an arm's model version on a lane (the control plane's rollout)."""
    experiment = get_experiment_for_user(request, name, manage=True)
    form = ExperimentCanaryForm(request.POST)
    arm = experiment.arms.filter(name=request.POST.get("arm", "")).select_related("model_version").first()
    if not form.is_valid() or arm is None:
        messages.error(request, "Pick an arm of this experiment, a lane and a share between 1 and 99%.")
        return redirect("experiment-detail", name=experiment.name)
    lane = get_lane_for_user(request, form.cleaned_data["lane"].name, deploy=True)
    try:
        rollout.start_canary(lane, arm.model_version, form.cleaned_data["percent"], request.user)
    except ControlError as exc:
        messages.error(request, str(exc))
        return redirect("experiment-detail", name=experiment.name)
    messages.success(
        request,
        f"Canary of {arm.model_version.name} (arm {arm.name}) on {lane.name} at {form.cleaned_data['percent']}%.",
    )
    return redirect("lane-detail", name=lane.name)
