from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, HttpResponseGone, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from accounts.access import has_role, ops_required, team_of
from accounts.models import Role
from lanes import policy as policy_file
from lanes import quotas
from lanes.actions import BriefRejected, cancel_job
from lanes.dispatch import broker_reachable
from lanes.models import (
    Artifact,
    Job,
    Lane,
    ModelVersion,
    Route,
    Verification,
    Worker,
    with_consumers,
    with_live_counts,
)
from lanes.review import ReviewError, approve, autofix, reject, rerender
from lanes.stats import WINDOWS, lane_stats
from telemetry.models import GpuSample

from .access import get_job_for_user, get_verification_for_user, next_url
from .forms import BriefForm

JOBS_PER_PAGE = 24


@require_GET
def home(request):
    return redirect("job-list")


@require_GET
def favicon(request):
    """Browsers ask for /favicon.ico on every site, whatever the page links to."""
    return redirect(static("console/favicon.ico"), permanent=True)


@login_required
@require_GET
def job_list(request):
    jobs = (
        Job.objects.visible_to(request.user)
        .select_related("lane", "model_version", "owner")
        .prefetch_related("artifacts", "verifications")
    )
    state = request.GET.get("state", "")
    if state in Job.State.values:
        jobs = jobs.filter(state=state)
    else:
        state = ""
    # An experiment runs dozens of jobs at once: they would bury the briefs people submitted,
    # so the list leaves them out unless asked (each experiment's page shows its own).
    with_experiments = request.GET.get("experiments") == "1"
    if not with_experiments:
        jobs = jobs.filter(experiment_cell__isnull=True)
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "team_usage": quotas.team_usage(team_of(request.user)),
        "page": page,
        "jobs": page.object_list,
        "state": state,
        "states": Job.State.choices,
        "with_experiments": with_experiments,
    }
    return render(request, "console/job_list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def brief_new(request):
    template = "console/brief_new.html"
    if request.htmx:
        template += "#brief-form"
    if request.method == "POST":
        form = BriefForm(request.POST, user=request.user)
        if form.is_valid():
            job = form.submit(request.user)
            if job is not None and job.state == Job.State.REJECTED:
                # Admission refused it (the lane is past its hard cap): the job row records why.
                form.add_error(None, f"Not accepted now: {job.admission_reason}. Retry in {job.retry_after} s.")
                response = render(request, template, {"form": form}, status=429)
                response["Retry-After"] = str(job.retry_after)
                return response
            if job is not None and job.queueing_down:
                form.add_error(
                    None, f"Queueing is down: your brief is saved as job {job.pk} and will be sent when it is back."
                )
                return render(request, template, {"form": form}, status=503)
            if job is not None:
                url = reverse("job-list") + f"?new={job.pk}"
                if request.htmx:
                    return HttpResponseClientRedirect(url)
                messages.success(request, f"Brief {job.admission} as job {job.pk} on lane {job.lane.name}.")
                return redirect(url)
        return render(request, template, {"form": form}, status=400)
    return render(request, template, {"form": BriefForm(user=request.user)})


@login_required
@require_GET
def job_detail(request, job_id: int):
    job = get_job_for_user(request, job_id)
    template = "console/job_detail.html"
    if request.htmx:
        template += "#job-detail"
    return render(request, template, {"job": job})


@login_required
@require_GET
def job_card(request, job_id: int):
    job = get_job_for_user(request, job_id)
    return render(request, "console/job_list.html#job-card", {"job": job})


@login_required
@require_POST
def job_cancel(request, job_id: int):
    job = get_job_for_user(request, job_id)
    if not cancel_job(job):
        message = f"Job {job.pk} is {job.state}; only queued or deferred jobs can be cancelled."
        if request.htmx:
            return HttpResponse(message, status=409)
        messages.error(request, message)
        return redirect("job-detail", job_id=job.pk)
    if request.htmx:
        return render(request, "console/job_list.html#job-card", {"job": job})
    messages.success(request, f"Job {job.pk} cancelled.")
    return redirect("job-detail", job_id=job.pk)


@login_required
@require_GET
def job_image(request, job_id: int, stage: str):
    try:
        return png_response(get_job_for_user(request, job_id), stage)
    except ImagePruned as exc:
        return HttpResponseGone(str(exc), content_type="text/plain")


class ImagePruned(Exception):
    """The stage's image existed, and retention deleted it (410 Gone, not 404)."""

    def __init__(self, artifact: Artifact) -> None:
        super().__init__(
            f"The {artifact.stage} image of job {artifact.job_id} was pruned after {artifact.pruned_after_days} days "
            "(ARTIFACT_RETENTION_DAYS)."
        )


def png_response(job: Job, stage: str) -> HttpResponse:
    """A stage's PNG of a job the caller may see (the console's image and the API's)."""
    artifact = next((a for a in job.artifacts.all() if a.stage == stage), None)
    if artifact is None or stage not in Artifact.Stage.values:
        raise Http404("No such image.")
    if artifact.pruned_at:
        raise ImagePruned(artifact)
    path = artifact.absolute_path
    if not path.is_file():
        raise Http404("The image file is missing from MEDIA_ROOT.")
    # Images are small; reading them whole avoids a sync file iterator under ASGI.
    response = HttpResponse(path.read_bytes(), content_type="image/png")
    response["Cache-Control"] = "private, max-age=86400, immutable"
    return response


@ops_required
@require_http_methods(["GET", "POST"])
def policy(request):
    """The routing policy: lanes and intents, shown to ops and admins, edited as YAML by admins.

    A posted policy is first checked and its changes shown (nothing applied); only the
    confirmation, sent with the digest the changes were computed against, applies it."""
    errors: list[str] = []
    text = None
    preview = None
    status = 200
    current = policy_file.export()
    based_on = policy_file.digest(current)
    if request.method == "POST":
        if not has_role(request.user, Role.ADMIN):
            raise PermissionDenied("Only admins may change the routing policy.")
        text = request.POST.get("policy", "")
        based_on = request.POST.get("based_on", "")
        confirmed = request.POST.get("confirm") == "yes"
        try:
            diff = policy_file.apply(text, by=request.user, based_on=based_on, dry_run=not confirmed)
        except policy_file.PolicyError as exc:
            errors, status = exc.errors, 409 if isinstance(exc, policy_file.PolicyConflict) else 400
        else:
            if not confirmed:
                preview = diff
            else:
                messages.success(request, f"Policy applied: {diff.summary()}.")
                return redirect("policy")
    lanes = with_consumers(list(Lane.objects.select_related("active_version", "fallback").order_by("name")))
    routes = Route.objects.select_related("lane").order_by("intent")
    rates = {(r["lane__name"], r["model_version__name"]): r for r in Verification.objects.pass_rates()}
    for lane in lanes:
        rate = rates.get((lane.name, lane.active_version.name))
        lane.pass_rate = f"{rate['passed'] / rate['total']:.0%} of {rate['total']}" if rate else "–"
    context = {
        "lanes": lanes,
        "routes": routes,
        "errors": errors,
        "policy_text": text or current,
        "based_on": based_on,
        "preview": preview,
    }
    return render(request, "console/policy.html", context, status=status)


@ops_required
@require_GET
def policy_yaml(request):
    response = HttpResponse(policy_file.export(), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="laneway-policy.yaml"'
    return response


REVIEW_AGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
REVIEW_ACTIONS = ("approve", "reject", "autofix", "rerender")


@login_required
@require_GET
def review_queue(request):
    """Flagged images awaiting a decision: the user's own (staff: everyone's)."""
    items = (
        Verification.objects.visible_to(request.user)
        .awaiting_review()
        .select_related("job__owner", "artifact", "lane", "model_version")
    )
    filters = {key: request.GET.get(key, "") for key in ("lane", "version", "age", "reason")}
    if filters["lane"]:
        items = items.filter(lane__name=filters["lane"])
    if filters["version"]:
        items = items.filter(model_version__name=filters["version"])
    if filters["age"] in REVIEW_AGES:
        items = items.filter(created_at__gte=timezone.now() - REVIEW_AGES[filters["age"]])
    if filters["reason"] in ("missing", "mismatch"):
        items = items.filter(reason__startswith=filters["reason"])
    page = Paginator(items, 20).get_page(request.GET.get("page"))
    for item in page.object_list:
        item.overlay = _boxes_as_percent(item)
    context = {
        "page": page,
        "items": page.object_list,
        "filters": filters,
        "lanes": Lane.objects.values_list("name", flat=True),
        "versions": ModelVersion.objects.values_list("name", flat=True),
        "intents": Route.objects.values_list("intent", flat=True),
        "ages": REVIEW_AGES,
    }
    return render(request, "console/review.html", context)


def _boxes_as_percent(verification) -> list[dict]:
    """OCR boxes as percentages of the image, for drawing over it at any display size."""
    width, height = verification.artifact.width or 1, verification.artifact.height or 1
    rects = []
    for line in verification.details.get("lines", []):
        xs, ys = [p[0] for p in line["box"]], [p[1] for p in line["box"]]
        rects.append(
            {
                "text": line["text"],
                "left": round(100 * min(xs) / width, 2),
                "top": round(100 * min(ys) / height, 2),
                "width": round(100 * (max(xs) - min(xs)) / width, 2),
                "height": round(100 * (max(ys) - min(ys)) / height, 2),
            }
        )
    return rects


def _apply_review(request, verification, action: str):
    if action == "approve":
        approve(verification, request.user)
        return f"Job {verification.job_id} approved."
    if action == "reject":
        reject(verification, request.user)
        return f"Job {verification.job_id} rejected."
    if action == "autofix":
        autofix(verification, request.user)
        return f"Job {verification.job_id}: text overlaid; verifying the fixed image."
    intent = request.POST.get("intent", "") or verification.job.intent
    new = rerender(verification, request.user, intent)
    return f"Job {verification.job_id} re-rendered as job {new.pk} on lane {new.lane.name}."


@login_required
@require_POST
def review_action(request, verification_id: int, action: str):
    verification = get_verification_for_user(request, verification_id)
    if action not in REVIEW_ACTIONS:
        raise Http404("No such review action.")
    try:
        message = _apply_review(request, verification, action)
    except (ReviewError, BriefRejected) as exc:
        if request.htmx:
            return HttpResponse(str(exc), status=409)
        messages.error(request, str(exc))
        return redirect("review")
    if request.htmx:
        return render(request, "console/review.html#review-done", {"verification": verification, "message": message})
    messages.success(request, message)
    return redirect(next_url(request, reverse("review")))


@login_required
@require_POST
def review_bulk(request):
    action = request.POST.get("action", "")
    if action not in ("approve", "reject", "autofix"):
        messages.error(request, "Pick approve, reject or auto-fix for the selected images.")
        return redirect("review")
    ids = [int(i) for i in request.POST.getlist("ids") if i.isascii() and i.isdigit() and len(i) < 19]
    chosen = Verification.objects.visible_to(request.user).filter(pk__in=ids).select_related("job__lane", "artifact")
    done, failed = 0, []
    for verification in chosen:
        try:
            _apply_review(request, verification, action)
            done += 1
        except (ReviewError, BriefRejected) as exc:
            failed.append(str(exc))
    if done:
        messages.success(request, f"{action}: {done} image{'s' if done != 1 else ''}.")
    for problem in failed:
        messages.error(request, problem)
    if not ids:
        messages.error(request, "Select at least one image.")
    return redirect("review")


SAMPLE_HISTORY = timedelta(minutes=5)


def _sample_series(since) -> dict[str, dict]:
    """The last five minutes of GPU samples as chart series, keyed worker|gpu."""
    series: dict[str, dict] = {}
    rows = (
        GpuSample.objects.filter(taken_at__gte=since)
        .order_by("taken_at", "id")
        .values_list(
            "worker", "gpu_index", "name", "taken_at", "utilization_pct", "memory_used_bytes", "memory_total_bytes"
        )
    )
    for worker, gpu, name, taken_at, util, used, total in rows:
        key = f"{worker}|{'cpu' if gpu is None else gpu}"
        entry = series.setdefault(key, {"worker": worker, "gpu": gpu, "name": name, "t": [], "util": [], "mem": []})
        entry["t"].append(taken_at.timestamp())
        entry["util"].append(util)
        entry["mem"].append(round(100 * used / total, 2) if used is not None and total else None)
    return series


@ops_required
@require_GET
def dashboard(request):
    """The fleet at a glance: a card per worker GPU with live charts, and the lane table."""
    window = request.GET.get("window", "5m")
    if window not in WINDOWS:
        window = "5m"
    now = timezone.now()
    stats: dict[int, list] = {}
    for s in lane_stats(window, now):
        stats.setdefault(s.lane.pk, []).append(s)
    lanes = with_live_counts(list(Lane.objects.select_related("active_version").order_by("name")))
    for lane in lanes:
        lane.stats = stats.get(lane.pk, [])
    template = "console/dashboard.html"
    if request.htmx and request.GET.get("part") == "lanes":
        template += "#lane-table"
    alive = set(Worker.objects.alive(now).values_list("ident", flat=True))
    workers = list(Worker.objects.filter(last_seen__gte=now - timedelta(hours=1)).order_by("hostname", "pid"))
    for w in workers:
        w.is_alive = w.ident in alive
    context = {
        "window": window,
        "windows": list(WINDOWS),
        "lanes": lanes,
        "workers": workers,
        "series": _sample_series(now - SAMPLE_HISTORY),
        "broker_down": not broker_reachable(),
    }
    return render(request, template, context)


@ops_required
@require_GET
def dashboard_samples(request):
    """The chart history again, for a page that reconnects after a dropped socket."""
    return JsonResponse(_sample_series(timezone.now() - SAMPLE_HISTORY))
