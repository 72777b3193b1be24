"""Who may do what, and one access helper per object: views never look objects up unscoped.

Roles (lanes.models.Role) nest: a creative submits, sees and reviews their team's jobs; ops
also run lanes (modes, limits, worker queues), telemetry and cost; admins also manage model
versions, rollouts, the routing policy, users and teams.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.utils.http import url_has_allowed_host_and_scheme

from lanes.models import Experiment, Job, Lane, ModelVersion, Role, Verification, Worker, has_role


def role_required(role: str):
    """Signed-in users with at least `role`; anyone else signed in gets 403, anonymous users the login page."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page is for {'ops and admins' if role == Role.OPS else 'admins'}.")
            return view(request, *args, **kwargs)

        return login_required(wrapped)

    return decorator


ops_required = role_required(Role.OPS)
admin_required = role_required(Role.ADMIN)


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
    if not has_role(request.user, Role.ADMIN if deploy else Role.OPS):
        raise PermissionDenied("Only admins change a lane's model versions." if deploy else "Ops and admins only.")
    related = ("active_version", "canary_version", "fallback", "refine_version")
    return get_object_or_404(Lane.objects.select_related(*related), name=name)


def get_version_for_user(request, name: str) -> ModelVersion:
    if not has_role(request.user, Role.ADMIN):
        raise PermissionDenied("Model versions are managed by admins.")
    return get_object_or_404(ModelVersion, name=name)


def get_worker_for_user(request, worker_id: int) -> Worker:
    if not has_role(request.user, Role.OPS):
        raise PermissionDenied("Ops and admins only.")
    return get_object_or_404(Worker, pk=worker_id)


def get_experiment_for_user(request, name: str, manage: bool = False):
    """An experiment the user may see (their team's, or any for ops); `manage` (run, stop, canary) needs an admin."""
    if manage and not has_role(request.user, Role.ADMIN):
        raise PermissionDenied("Experiments are run by admins.")
    return get_object_or_404(Experiment.objects.visible_to(request.user).select_related("created_by"), name=name)


def next_url(request, default: str) -> str:
    """The form's `next` page when it is on this site, else `default` (no open redirects)."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return default
