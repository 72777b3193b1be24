"""Shadow renders in the console: start and stop on the lane page (ops), and the side-by-side page (admins)."""

from django.http import Http404, HttpResponseGone
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from accounts.access import admin_required, ops_required
from experiments import shadow as comparison
from lanes import shadow
from lanes.changes import ControlError
from lanes.models import Shadow

from .access import get_lane_for_user, get_shadow_job_for_user
from .control_views import _done, _invalid, _refused
from .forms import RevisionForm, ShadowForm
from .views import ImagePruned, png_response

PAIRS_SHOWN = 48


@ops_required
@require_POST
def shadow_start(request, name: str):
    lane = get_lane_for_user(request, name)
    form = ShadowForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form, shadow_form=form)
    data = form.cleaned_data
    try:
        shadow.start(lane, data["version"], data["percent"], request.user, data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc, shadow_form=form)
    return _done(request, lane, f"{data['version'].name} shadows {data['percent']}% of the briefs on {lane.name}.")


@ops_required
@require_POST
def shadow_stop(request, name: str):
    lane = get_lane_for_user(request, name)
    form = RevisionForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form)
    try:
        stopped = shadow.stop(lane, request.user, form.cleaned_data["revision"], reason="stopped in the console")
    except ControlError as exc:
        return _refused(request, lane, exc)
    return _done(request, lane, f"Shadow of {stopped.version.name} stopped on {lane.name}.")


@admin_required
@require_GET
def shadow_detail(request, name: str):
    """The lane's latest shadow (or `?run=<id>`): production and shadow images side by side, per pair and in all."""
    lane = get_lane_for_user(request, name)
    runs = list(Shadow.objects.filter(lane=lane).select_related("version", "started_by"))
    wanted = request.GET.get("run", "")
    run = next((r for r in runs if str(r.pk) == wanted), None) if wanted else (runs[0] if runs else None)
    if wanted and run is None:
        raise Http404("No such shadow on this lane.")
    context = {"lane": lane, "runs": runs, "run": run}
    if run is not None:
        report = comparison.report(run)
        context.update(report=report, pairs=report.pairs[:PAIRS_SHOWN], more=max(0, len(report.pairs) - PAIRS_SHOWN))
        # The gate judges a version's latest shadow on the lane: shown on that one's page.
        if run == next(r for r in runs if r.version_id == run.version_id):
            context["gate"] = comparison.judge(lane, run.version, report)
    template = "console/shadow.html"
    if request.htmx:
        template += "#shadow-pairs"
    return render(request, template, context)


@admin_required
@require_GET
def shadow_image(request, name: str, job_id: int, stage: str):
    try:
        return png_response(get_shadow_job_for_user(request, name, job_id), stage)
    except ImagePruned as exc:
        return HttpResponseGone(str(exc), content_type="text/plain")
