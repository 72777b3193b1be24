"""One access helper per object: views (and the HTTP API beside them) never look objects up unscoped.

Roles and row scoping come from accounts.access; here they meet the objects the console shows.
"""

from django.shortcuts import get_object_or_404
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.access import has_role, require_role, team_of
from accounts.models import Role, Team
from experiments.models import Experiment
from lanes.models import Job, Lane, ModelVersion, Verification, Worker
from webhooks.models import Delivery, Endpoint


def get_job_for_user(request, job_id: int) -> Job:
    """The job if the user may see it; 404 otherwise (another team's job does not exist for them)."""
    queryset = Job.objects.visible_to(request.user).select_related("lane", "model_version", "refine_version", "owner")
    return get_object_or_404(queryset.prefetch_related("artifacts", "verifications"), pk=job_id)


def get_verification_for_user(request, verification_id: int) -> Verification:
    """A verification of a job the user may see; 404 otherwise."""
    queryset = Verification.objects.visible_to(request.user).select_related("job__lane", "artifact", "lane")
    return get_object_or_404(queryset, pk=verification_id)


def get_lane_for_user(request, name: str, deploy: bool = False) -> Lane:
    """A lane for ops to operate; `deploy` (switching its model versions) needs an admin."""
    require_role(
        request.user, Role.ADMIN if deploy else Role.OPS,
        "Only admins change a lane's model versions." if deploy else "Ops and admins only.",
    )  # fmt: skip
    related = ("active_version", "canary_version", "fallback", "refine_version")
    return get_object_or_404(Lane.objects.select_related(*related), name=name)


def get_shadow_job_for_user(request, lane_name: str, job_id: int) -> Job:
    """A shadow job of the lane, for admins only (it is nobody's brief: no job page shows it)."""
    require_role(request.user, Role.ADMIN, "Shadow renders are shown to admins.")
    queryset = Job.objects.filter(shadow_of__isnull=False, lane__name=lane_name).prefetch_related("artifacts")
    return get_object_or_404(queryset, pk=job_id)


def get_version_for_user(request, name: str) -> ModelVersion:
    require_role(request.user, Role.ADMIN, "Model versions are managed by admins.")
    return get_object_or_404(ModelVersion, name=name)


def get_worker_for_user(request, worker_id: int) -> Worker:
    require_role(request.user, Role.OPS, "Ops and admins only.")
    return get_object_or_404(Worker, pk=worker_id)


def get_experiment_for_user(request, name: str, manage: bool = False):
    """An experiment the user may see (their team's, or any for ops); `manage` (run, stop, canary) needs an admin."""
    if manage:
        require_role(request.user, Role.ADMIN, "Experiments are run by admins.")
    return get_object_or_404(Experiment.objects.visible_to(request.user).select_related("created_by"), name=name)


def get_team_for_user(request, name: str) -> Team:
    """A team whose usage the user may read: their own, or any for ops and admins; 404 for another team's."""
    teams = Team.objects.all() if has_role(request.user, Role.OPS) else Team.objects.filter(pk=team_of(request.user))
    return get_object_or_404(teams, name=name)


def get_endpoint_for_user(request, endpoint_id: int) -> Endpoint:
    """A webhook endpoint for ops and admins of its team (admins: any team's); 404 for another team's."""
    require_role(request.user, Role.OPS, "Webhooks are managed by ops and admins.")
    return get_object_or_404(Endpoint.objects.visible_to(request.user).select_related("team"), pk=endpoint_id)


def get_delivery_for_user(request, delivery_id: int) -> Delivery:
    """A delivery of an endpoint the user may manage; 404 otherwise."""
    require_role(request.user, Role.OPS, "Webhooks are managed by ops and admins.")
    endpoints = Endpoint.objects.visible_to(request.user)
    return get_object_or_404(
        Delivery.objects.select_related("endpoint__team").filter(endpoint__in=endpoints), pk=delivery_id
    )


def next_url(request, default: str) -> str:
    """The form's `next` page when it is on this site, else `default` (no open redirects)."""
    target = request.POST.get("next", "")
    # A path on this site only: `redirect` would read a bare word ("draft") as a URL name, and fail.
    if target.startswith("/") and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return default
