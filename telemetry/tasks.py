from celery import shared_task

from .models import GpuSample

PRUNE_BATCH = 5000


@shared_task(name="telemetry.tasks.prune_samples", ignore_result=True)
def prune_samples(max_batches: int = 100) -> int:
    """Beat: delete samples older than the retention window, in batches so no lock is held for long."""
    deleted = 0
    for _ in range(max_batches):
        ids = list(GpuSample.objects.expired().order_by("id").values_list("id", flat=True)[:PRUNE_BATCH])
        if not ids:
            break
        deleted += GpuSample.objects.filter(id__in=ids).delete()[0]
    return deleted
