"""The control plane: lanes (ops), model versions and rollouts (admins), workers, the audit log."""

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.access import admin_required, has_role, ops_required
from accounts.models import Role, Team
from lanes import adapters, canary, control, families, progressive, quotas, registry, rollout, shadow, windows
from lanes.changes import ConflictError, ControlError
from lanes.models import (
    Adapter,
    AuditEvent,
    Lane,
    LaneAdapter,
    LaneRelease,
    ModelVersion,
    RolloutPlan,
    Verification,
    Worker,
    with_consumers,
    with_live_counts,
)
from lanes.stats import version_stats

from .access import get_lane_for_user, get_version_for_user, get_worker_for_user, next_url
from .forms import (
    ActivateForm,
    AdapterForm,
    CanaryForm,
    LaneAdapterForm,
    LimitsForm,
    ModeForm,
    QuotaForm,
    RevisionForm,
    RolloutPlanForm,
    RolloutStartForm,
    ShadowForm,
    VersionForm,
    error_summary,
)


@ops_required
@require_GET
def lane_list(request):
    lanes = with_consumers(
        with_live_counts(
            list(Lane.objects.select_related("active_version", "canary_version", "fallback").order_by("name"))
        )
    )
    return render(request, "console/lanes.html", {"lanes": lanes})


def _lane_context(request, lane: Lane, **forms) -> dict:
    with_consumers(with_live_counts([lane]))
    now = timezone.now()
    alive = set(Worker.objects.alive(now).values_list("pk", flat=True))
    # Render workers: those on the control queue (every `gpu_worker`), or already on this lane.
    workers = [
        worker
        for worker in Worker.objects.filter(pk__in=alive).order_by("hostname", "pid")
        if {settings.CELERY_TASK_DEFAULT_QUEUE, lane.queue} & set(worker.queue_list)
    ]
    for worker in workers:
        worker.consumes = lane.queue in worker.queue_list
    initial = {"revision": lane.revision}
    lane_windows = [
        {"window": window, "open": windows.current(window, now), "next": windows.upcoming(window, now)}
        for window in lane.windows.all()
    ]
    return {
        "lane": lane,
        "lane_windows": lane_windows,
        "next_window": windows.next_window(lane, now=now),
        "workers": workers,
        "releases": LaneRelease.objects.filter(lane=lane).select_related("version", "started_by")[:50],
        "events": AuditEvent.objects.filter(lane=lane)[:20],
        "rollback_to": rollout.rollback_target(lane),
        "verdict": canary.judge_canary(lane, now),
        "can_deploy": has_role(request.user, Role.ADMIN),
        "limits_form": forms.get("limits_form") or LimitsForm(instance=lane, initial=initial),
        "activate_form": forms.get("activate_form") or ActivateForm(initial=initial),
        "canary_form": forms.get("canary_form") or CanaryForm(initial=initial),
        "adapter_links": LaneAdapter.objects.filter(lane=lane).select_related("adapter__version"),
        "adapter_form": forms.get("adapter_form") or LaneAdapterForm(lane=lane, initial=initial),
        "drained": lane.draining and not (lane.queued or lane.running or lane.deferred),
        "shadow": shadow.running(lane),
        "shadow_form": forms.get("shadow_form") or ShadowForm(initial=initial),
        **_rollout_context(request, lane, **forms),
    }


def _rollout_context(request, lane: Lane, **forms) -> dict:
    """The rollout panel: the plan, the rollout running (or the last one) and its analysis."""
    initial = {"revision": lane.revision}
    plan = RolloutPlan.objects.filter(lane=lane).first()
    latest = lane.rollouts.select_related("version", "baseline").first()
    text = progressive.plan_yaml(plan.steps, plan.thresholds, plan.require_shadow) if plan else progressive.EXAMPLE_PLAN
    return {
        "plan": plan,
        "rollout": latest,
        "rollout_running": latest is not None and latest.state == latest.State.RUNNING,
        "can_operate": has_role(request.user, Role.OPS),
        "plan_form": forms.get("plan_form") or RolloutPlanForm(initial={**initial, "plan": text}),
        "rollout_form": forms.get("rollout_form") or RolloutStartForm(initial=initial),
    }


@ops_required
@require_GET
def lane_detail(request, name: str):
    lane = get_lane_for_user(request, name)
    template = "console/lane.html"
    part = request.GET.get("part")
    if request.htmx and part in ("state", "rollout"):
        template += f"#lane-{part}"
    return render(request, template, _lane_context(request, lane))


def _done(request, lane: Lane, message: str):
    messages.success(request, message)
    return redirect("lane-detail", name=lane.name)


def _refused(request, lane: Lane, error: ControlError, **forms):
    """A refused control action: the page again with the reason, and 409 (conflict) or 400."""
    status = 409 if isinstance(error, ConflictError) else 400
    lane.refresh_from_db()
    messages.error(request, str(error))
    return render(request, "console/lane.html", _lane_page(request, lane, **forms), status=status)


def _invalid(request, lane: Lane, form, **forms):
    problems = error_summary(form)
    messages.error(request, f"Nothing changed: {problems}")
    return render(request, "console/lane.html", _lane_page(request, lane, **forms), status=400)


def _lane_page(request, lane: Lane, **forms) -> dict:
    """The lane page answering a refused POST: the browser's address goes back to the lane's
    own URL (static/console/live.js), so a reload shows the lane instead of posting again."""
    return {**_lane_context(request, lane, **forms), "page_url": reverse("lane-detail", args=[lane.name])}


@ops_required
@require_POST
def lane_mode(request, name: str):
    lane = get_lane_for_user(request, name)
    form = ModeForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form)
    try:
        lane, moved = control.set_mode(lane, form.cleaned_data["mode"], request.user, form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc)
    extra = f"; {moved} waiting job{'s' if moved != 1 else ''} moved to its fallback" if moved else ""
    return _done(request, lane, f"Lane {lane.name} is now {lane.mode}{extra}.")


@ops_required
@require_POST
def lane_limits(request, name: str):
    lane = get_lane_for_user(request, name)
    form = LimitsForm(request.POST, instance=Lane.objects.get(pk=lane.pk))
    if not form.is_valid():
        return _invalid(request, lane, form, limits_form=form)
    values = {field: form.cleaned_data[field] for field in control.OPS_FIELDS}
    try:
        lane = control.update_limits(lane, values, request.user, form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc)
    return _done(request, lane, f"Lane {lane.name}: limits saved.")


@ops_required
@require_POST
def lane_dismiss_notice(request, name: str):
    lane = get_lane_for_user(request, name)
    control.dismiss_notice(lane, request.user)
    return redirect(next_url(request, reverse("lane-detail", args=[name])))


@admin_required
@require_POST
def lane_activate(request, name: str):
    lane = get_lane_for_user(request, name, deploy=True)
    form = ActivateForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form, activate_form=form)
    version = form.cleaned_data["version"]
    try:
        lane = rollout.activate(lane, version, request.user, form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc, activate_form=form)
    return _done(request, lane, f"Lane {lane.name} now renders new jobs with {version.name}.")


@admin_required
@require_POST
def lane_canary(request, name: str):
    lane = get_lane_for_user(request, name, deploy=True)
    form = CanaryForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form, canary_form=form)
    data = form.cleaned_data
    try:
        lane = rollout.start_canary(lane, data["version"], data["percent"], request.user, data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc, canary_form=form)
    return _done(request, lane, f"Canary {data['version'].name} takes {data['percent']}% of new jobs on {lane.name}.")


@ops_required
@require_POST
def lane_adapter_link(request, name: str):
    lane = get_lane_for_user(request, name)
    form = LaneAdapterForm(request.POST, lane=lane)
    if not form.is_valid():
        return _invalid(request, lane, form, adapter_form=form)
    data = form.cleaned_data
    try:
        entry = adapters.link(
            lane, data["adapter"], request.user, weight=data["weight"], pinned=data["pinned"],
            expected_revision=data["revision"],
        )  # fmt: skip
    except ControlError as exc:
        return _refused(request, lane, exc, adapter_form=form)
    how = "on every job" if entry.pinned else "for briefs that pick it"
    return _done(request, lane, f"Lane {lane.name} applies {entry.adapter.name} at {entry.weight:g} {how}.")


@ops_required
@require_POST
def lane_adapter_unlink(request, name: str, adapter_id: int):
    lane = get_lane_for_user(request, name)
    form = RevisionForm(request.POST)
    adapter = Adapter.objects.filter(pk=adapter_id).first()
    if adapter is None:
        raise Http404("No such adapter.")
    if not form.is_valid():
        return _invalid(request, lane, form)
    try:
        adapters.unlink(lane, adapter, request.user, expected_revision=form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc)
    return _done(request, lane, f"Lane {lane.name} no longer applies {adapter.name}.")


def _revision_action(request, name: str, action, message: str, deploy: bool = True):
    """A lane change that takes only the page's revision: `action(lane, by, revision)` returns the
    changed lane (or its rollout, for the rollout controls)."""
    lane = get_lane_for_user(request, name, deploy=deploy)
    form = RevisionForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form)
    try:
        changed = action(lane, request.user, form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc)
    if isinstance(changed, Lane):
        lane = changed
    return _done(request, lane, message.format(lane=lane))


@admin_required
@require_POST
def lane_promote(request, name: str):
    return _revision_action(request, name, rollout.promote, "{lane.active_version.name} promoted on {lane.name}.")


@admin_required
@require_POST
def lane_end_canary(request, name: str):
    return _revision_action(request, name, rollout.end_canary, "Canary stopped on {lane.name}.")


@admin_required
@require_POST
def lane_rollback(request, name: str):
    return _revision_action(
        request, name, rollout.rollback,
        "Rolled back: {lane.name} renders new jobs with {lane.active_version.name}; running jobs finish as they were.",
    )  # fmt: skip


@admin_required
@require_POST
def lane_rollout_plan(request, name: str):
    lane = get_lane_for_user(request, name, deploy=True)
    form = RolloutPlanForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form, plan_form=form)
    try:
        plan = progressive.save_plan(lane, form.plan, request.user, form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc, plan_form=form)
    return _done(request, lane, f"Lane {lane.name}: rollout plan saved ({plan.describe()}).")


@admin_required
@require_POST
def lane_rollout_start(request, name: str):
    lane = get_lane_for_user(request, name, deploy=True)
    form = RolloutStartForm(request.POST)
    if not form.is_valid():
        return _invalid(request, lane, form, rollout_form=form)
    version = form.cleaned_data["version"]
    try:
        started = progressive.start(lane, version, request.user, form.cleaned_data["revision"])
    except ControlError as exc:
        return _refused(request, lane, exc, rollout_form=form)
    return _done(request, lane, f"Rolling out {version.name} on {lane.name}: {started.describe()}.")


def _rollout_action(request, name: str, action, message: str):
    return _revision_action(request, name, action, message, deploy=False)  # ops may steer a rollout


@ops_required
@require_POST
def lane_rollout_pause(request, name: str):
    return _rollout_action(request, name, progressive.pause, "Rollout on {lane.name} paused: the step is held.")


@ops_required
@require_POST
def lane_rollout_resume(request, name: str):
    return _rollout_action(request, name, progressive.resume, "Rollout on {lane.name} resumed.")


@ops_required
@require_POST
def lane_rollout_skip(request, name: str):
    return _rollout_action(request, name, progressive.skip, "Rollout on {lane.name}: step skipped.")


@ops_required
@require_POST
def lane_rollout_abort(request, name: str):
    return _rollout_action(request, name, progressive.abort, "Rollout on {lane.name} aborted: the canary is stopped.")


@ops_required
@require_POST
def worker_consume(request, name: str, worker_id: int):
    lane = get_lane_for_user(request, name)
    worker = get_worker_for_user(request, worker_id)
    consume = request.POST.get("consume") == "on"
    try:
        replies = control.set_consuming(worker, lane, consume, request.user)
    except ControlError as exc:
        return _refused(request, lane, exc)
    verb = "now consumes" if consume else "stopped consuming"
    return _done(request, lane, f"{worker.node} {verb} {', '.join(lane.queues)} ({'; '.join(replies)}).")


@ops_required
@require_POST
def workers_reload(request):
    try:
        replies = control.reload_workers(request.user)
    except ControlError as exc:
        messages.error(request, str(exc))
    else:
        if replies:
            messages.success(request, "Reload: " + "; ".join(replies))
        else:
            messages.error(request, "No worker answered the reload request.")
    return redirect(next_url(request, reverse("lane-list")))


# Model versions


@admin_required
@require_GET
def version_list(request):
    versions = list(
        ModelVersion.objects.select_related("registered_by").annotate(
            lanes_active=Count("lanes", distinct=True),
            lanes_canary=Count("canary_lanes", distinct=True),
            lanes_refining=Count("refining_lanes", distinct=True),
        )
    )
    template = "console/versions.html"
    if request.htmx and request.GET.get("part") == "table":
        template += "#version-table"
    context = {
        "versions": versions,
        # The table refreshes itself while a worker hashes or validates one of them.
        "awaiting_verdict": any(version.awaiting_verdict for version in versions),
        "form": VersionForm(),
        "families": families.table(),
    }
    return render(request, template, context)


@admin_required
@require_http_methods(["GET", "POST"])
def version_new(request):
    form = VersionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = registry.register_version(request.user, **form.cleaned_data)
        except ControlError as exc:
            for field, message in exc.errors.items():
                form.add_error(field if field in form.fields else None, message)
        else:
            how = "validating" if version.is_hosted else "a worker hashes its files, then validates it"
            messages.success(request, f"{version.name} registered; {how}.")
            return redirect("version-detail", name=version.name)
    status = 400 if request.method == "POST" else 200
    return render(request, "console/version_new.html", {"form": form, "families": families.table()}, status=status)


@admin_required
@require_GET
def version_detail(request, name: str):
    version = get_version_for_user(request, name)
    lanes = Lane.objects.using_version(version).select_related("active_version", "canary_version")
    template = "console/version.html"
    if request.htmx:
        template += "#version-status"
    context = {
        "version": version,
        "lanes": lanes,
        "stats": version_stats(version),
        "pass_rates": [r for r in Verification.objects.pass_rates() if r["model_version_id"] == version.pk],
        "events": AuditEvent.objects.filter(model_version=version)[:20],
        "adapters": version.adapters.all(),
        "adapter_form": AdapterForm(),
    }
    return render(request, template, context)


@admin_required
@require_POST
def version_adapter_new(request, name: str):
    version = get_version_for_user(request, name)
    form = AdapterForm(request.POST)
    if form.is_valid():
        try:
            adapter = adapters.register_adapter(request.user, version=version, **form.cleaned_data)
        except ControlError as exc:
            for field, message in exc.errors.items():
                form.add_error(field if field in form.fields else None, message)
        else:
            messages.success(request, f"LoRA {adapter.name} registered for {version.name}; validating.")
            return redirect("version-detail", name=version.name)
    problems = error_summary(form)
    messages.error(request, f"Adapter not registered: {problems}")
    context = {
        "version": version,
        "lanes": Lane.objects.using_version(version),
        "stats": version_stats(version),
        "pass_rates": [],
        "events": AuditEvent.objects.filter(model_version=version)[:20],
        "adapters": version.adapters.all(),
        "adapter_form": form,
    }
    return render(request, "console/version.html", context, status=400)


@admin_required
@require_GET
def version_smoke(request, name: str):
    version = get_version_for_user(request, name)
    if not version.smoke_image:
        raise Http404("No smoke image yet.")
    path = Path(settings.MEDIA_ROOT) / version.smoke_image
    if not path.is_file():
        raise Http404("The smoke image is missing from MEDIA_ROOT.")
    return HttpResponse(path.read_bytes(), content_type="image/png")


@admin_required
@require_POST
def version_validate(request, name: str):
    return _version_change(request, name, registry.request_validation, "Validating {} again.")


@admin_required
@require_POST
def version_retire(request, name: str):
    return _version_change(request, name, registry.retire_version, "{} retired.")


def _version_change(request, name: str, change, success: str):
    version = get_version_for_user(request, name)
    try:
        change(version, request.user)
    except ControlError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, success.format(version.name))
    return redirect("version-detail", name=version.name)


# Audit log

AUDIT_AGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


@ops_required
@require_GET
def audit_log(request):
    events = AuditEvent.objects.all()
    filters = {key: request.GET.get(key, "") for key in ("lane", "user", "action", "age")}
    if filters["lane"]:
        events = events.filter(lane_name=filters["lane"])
    if filters["user"]:
        events = events.filter(actor_name=filters["user"])
    if filters["action"]:
        events = events.filter(action=filters["action"])
    if filters["age"] in AUDIT_AGES:
        events = events.filter(at__gte=timezone.now() - AUDIT_AGES[filters["age"]])
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "events": page.object_list,
        "filters": filters,
        "lanes": Lane.objects.values_list("name", flat=True),
        "users": sorted(set(AuditEvent.objects.values_list("actor_name", flat=True).distinct())),
        "actions": sorted(set(AuditEvent.objects.values_list("action", flat=True).distinct())),
        "ages": AUDIT_AGES,
    }
    return render(request, "console/audit.html", context)


def _teams_page(request, bad_form=None, bad_team=None, status=200):
    teams = list(Team.objects.order_by("name").select_related("quota").prefetch_related("quota__denied_lanes"))
    rows = []
    for team in teams:
        quota = getattr(team, "quota", None)
        form = bad_form if bad_team == team.pk else QuotaForm(instance=quota, prefix=f"team{team.pk}")
        rows.append({"team": team, "usage": quotas.team_usage(team.pk), "form": form, "has_quota": quota is not None})
    return render(request, "console/teams.html", {"rows": rows}, status=status)


@ops_required
@require_GET
def team_list(request):
    return _teams_page(request)


@ops_required
@require_POST
def team_quota(request, pk: int):
    team = Team.objects.filter(pk=pk).first()
    if team is None:
        raise Http404("No such team.")
    if request.POST.get("clear"):
        quotas.set_quota(team, None, [], request.user)
        messages.success(request, f"Team {team.name}: quota removed (weight 1, no limits).")
        return redirect("team-list")
    form = QuotaForm(request.POST, prefix=f"team{team.pk}")
    if not form.is_valid():
        messages.error(request, f"Nothing changed: {error_summary(form)}")
        return _teams_page(request, form, team.pk, status=400)
    values = {field: form.cleaned_data.get(field) for field in quotas.QUOTA_FIELDS}
    quotas.set_quota(team, values, list(form.cleaned_data["denied_lanes"]), request.user)
    messages.success(request, f"Team {team.name}: quota saved.")
    return redirect("team-list")
