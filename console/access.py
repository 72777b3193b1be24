"""One access helper per object: views never look objects up unscoped."""

from django.shortcuts import get_object_or_404

from lanes.models import Job, Verification


def get_job_for_user(request, job_id: int) -> Job:
    """The job if the user may see it; 404 otherwise (another user's job does not exist for them)."""
    queryset = Job.objects.visible_to(request.user).select_related("lane", "model_version", "refine_version", "owner")
    return get_object_or_404(queryset.prefetch_related("artifacts", "verifications"), pk=job_id)


def get_verification_for_user(request, verification_id: int) -> Verification:
    """A verification of a job the user may see; 404 otherwise."""
    queryset = Verification.objects.visible_to(request.user).select_related("job__lane", "artifact", "lane")
    return get_object_or_404(queryset, pk=verification_id)
