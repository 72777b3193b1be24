"""A team's recent usage, as the rows finished jobs leave behind (no worker needed)."""

from datetime import timedelta

from django.utils import timezone

from lanes.models import Job, Lane


def used(owner, gpu_seconds: float, *, lane: str = "final-render", ago: timedelta = timedelta(minutes=1), **fields):
    """A succeeded job of `owner`'s team that used `gpu_seconds`, finished `ago`."""
    row = Lane.objects.select_related("active_version").get(name=lane)
    finished = timezone.now() - ago
    fields.setdefault("gpu_name", "CPU")  # CPU time: free unless priced
    return Job.objects.create(
        owner=owner, team_id=owner.member.team_id, prompt="earlier work", intent="final", lane=row,
        model_version=row.active_version, seed=1, width=64, height=64, steps=4, guidance=7.5,
        state=Job.State.SUCCEEDED, started_at=finished - timedelta(seconds=1), finished_at=finished,
        gpu_seconds=gpu_seconds, **fields,
    )  # fmt: skip
