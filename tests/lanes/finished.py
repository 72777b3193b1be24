"""Finished jobs with real PNGs on MEDIA_ROOT, made without a worker: for retention and backup tests."""

from datetime import timedelta

from django.utils import timezone
from PIL import Image

from lanes import artifacts
from lanes.actions import submit_brief
from lanes.models import Artifact, Job


def finished_job(owner, *, days_old: float = 0, prompt: str = "A teal sneaker ad", seed: int = 1, **brief) -> Job:
    """A succeeded job whose final image (a distinct PNG per seed) was rendered `days_old` days ago."""
    job = submit_brief(owner, prompt=prompt, intent=brief.pop("intent", "draft"), seed=seed, **brief)
    when = timezone.now() - timedelta(days=days_old)
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, started_at=when, finished_at=when, attempts=1)
    job.refresh_from_db()
    image = Image.new("RGB", (16, 8), (seed % 256, (seed * 7) % 256, 90))
    artifact = artifacts.store_png(job, image, Artifact.Stage.FINAL)
    Artifact.objects.filter(pk=artifact.pk).update(created_at=when)
    return job
