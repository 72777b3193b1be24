"""The fleet for ops: workers with their liveness, and each device's latest GPU sample."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone
from ninja import Router, Schema

from accounts.access import require_role
from accounts.models import Role
from lanes.models import Worker
from telemetry.models import GpuSample

from .core import errors

router = Router(tags=["fleet"])


class WorkerOut(Schema):
    id: int
    ident: str
    node: str
    hostname: str
    pid: int
    queues: list[str]
    device: str
    gpu_index: int | None
    alive: bool
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    oom_count: int


class GpuOut(Schema):
    worker: str
    gpu_index: int | None
    name: str
    taken_at: datetime
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    power_w: float | None
    running_jobs: int


@router.get("/fleet/workers", response={200: list[WorkerOut], **errors()})
def list_workers(request):
    """Workers seen in the last hour; `alive` means heartbeating now."""
    require_role(request.user, Role.OPS, "Ops and admins only.")
    now = timezone.now()
    alive = set(Worker.objects.alive(now).values_list("pk", flat=True))
    workers = Worker.objects.filter(last_seen__gte=now - timedelta(hours=1)).order_by("hostname", "pid")
    return [
        {**{f: getattr(w, f) for f in WorkerOut.model_fields if f not in ("queues", "alive")},
         "queues": w.queue_list, "alive": w.pk in alive}
        for w in workers
    ]  # fmt: skip


@router.get("/fleet/gpus", response={200: list[GpuOut], **errors()})
def latest_samples(request):
    """The newest telemetry sample of each worker's device (utilisation, memory, temperature, power)."""
    require_role(request.user, Role.OPS, "Ops and admins only.")
    return list(GpuSample.objects.latest_per_device())
