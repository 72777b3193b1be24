from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class GpuSampleQuerySet(models.QuerySet):
    def latest_per_device(self) -> "GpuSampleQuerySet":
        """The newest sample of each (worker, device) seen within the retention window."""
        newest = self.values("worker", "gpu_index").annotate(last=models.Max("id")).values_list("last", flat=True)
        return self.filter(id__in=list(newest)).order_by("worker", "gpu_index")

    def expired(self, now=None) -> "GpuSampleQuerySet":
        now = now or timezone.now()
        return self.filter(taken_at__lt=now - timedelta(seconds=settings.TELEMETRY_RETENTION_SECONDS))


class GpuSample(models.Model):
    """One reading of one GPU (or, on a CPU-only worker, of the worker process) at one instant."""

    worker = models.CharField(max_length=200, db_index=True)
    gpu_index = models.SmallIntegerField(null=True, blank=True, help_text="None: a CPU-only worker.")
    name = models.CharField(max_length=100, blank=True)
    taken_at = models.DateTimeField(default=timezone.now, db_index=True)
    utilization_pct = models.FloatField(null=True, blank=True)
    memory_used_bytes = models.BigIntegerField(null=True, blank=True)
    memory_total_bytes = models.BigIntegerField(null=True, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    power_w = models.FloatField(null=True, blank=True)
    running_jobs = models.PositiveSmallIntegerField(default=0)

    objects = GpuSampleQuerySet.as_manager()

    class Meta:
        ordering = ["-taken_at", "-id"]

    def __str__(self) -> str:
        return f"{self.worker} gpu {self.gpu_index} @ {self.taken_at:%H:%M:%S}"
