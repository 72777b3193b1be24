"""Lane and model-version statistics over a time window, computed in the database.

Every figure is an aggregate query grouped by (lane, model version); percentiles are
nearest-rank: PERCENTILE_DISC on PostgreSQL, window functions (ROW_NUMBER over the group)
on SQLite. No job rows are loaded into Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import (
    Aggregate,
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Q,
    Sum,
    Value,
    When,
    Window,
)
from django.db.models.functions import Ceil, Coalesce, RowNumber
from django.utils import timezone

from .models import Job, Lane, ModelVersion, Verification

WINDOWS = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(hours=24)}
PERCENTILES = (50, 95, 99)
GROUP = ("lane_id", "model_version_id")


@dataclass
class Stats:
    lane: Lane
    version: ModelVersion | None
    finished: int = 0
    succeeded: int = 0
    failed: int = 0
    ooms: int = 0
    preemptions: int = 0  # times its jobs paused at a step boundary for a higher class
    deferrals: int = 0
    gpu_seconds: float = 0.0  # device-seconds: GPU-seconds, and CPU-seconds of jobs a CPU worker ran
    cpu_images: int = 0  # succeeded jobs that ran on a CPU
    cost: float = 0.0
    verified: int = 0
    verified_passed: int = 0
    window_seconds: float = 300.0
    queue_s: dict[int, float] = field(default_factory=dict)
    run_s: dict[int, float] = field(default_factory=dict)

    @property
    def throughput_per_min(self) -> float:
        return self.succeeded / (self.window_seconds / 60)

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None

    @property
    def gpu_seconds_per_image(self) -> float | None:
        return self.gpu_seconds / self.succeeded if self.succeeded else None

    @property
    def device_seconds_label(self) -> str:
        """What its device-seconds are: "GPU-s", "CPU-s" (every image rendered on a CPU), or "device-s" (both)."""
        if not self.cpu_images:
            return "GPU-s"
        return "CPU-s" if self.cpu_images == self.succeeded else "device-s"

    @property
    def cost_per_image(self) -> float | None:
        return self.cost / self.succeeded if self.succeeded else None

    @property
    def pass_rate(self) -> float | None:
        return self.verified_passed / self.verified if self.verified else None

    @property
    def over_slo(self) -> bool:
        p95 = self.run_s.get(95)
        queue = self.queue_s.get(95) or 0.0
        return p95 is not None and (p95 + queue) * 1000 > self.lane.latency_slo_ms


def nearest_rank(values, q: float) -> float | None:
    """The nearest-rank q-th percentile of values (None when there are none), as the database computes it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


CPU = "CPU"  # the gpu_name of a job that ran on a CPU


def price_per_hour(gpu_name: str) -> float:
    """What an hour of this accelerator costs (GPU_HOURLY_PRICES, by model name, else its default; a
    CPU's time is free unless a `CPU` price is set)."""
    prices = settings.GPU_HOURLY_PRICES
    return prices.get(gpu_name, 0.0 if gpu_name == CPU else prices["default"])


def cost_expression():
    """What the jobs cost, in SQL: GPU-seconds × the job's accelerator price (price_per_hour), plus what
    a hosted engine charged, summed."""
    prices = settings.GPU_HOURLY_PRICES
    named = {CPU: 0.0, **{name: price for name, price in prices.items() if name != "default"}}
    per_hour = Case(
        *(When(gpu_name=name, then=Value(price)) for name, price in named.items()),
        default=Value(prices["default"]),
        output_field=FloatField(),
    )
    gpu = Coalesce(F("gpu_seconds"), Value(0.0)) * per_hour / Value(3600.0)
    return Sum(gpu + F("api_cost"), output_field=FloatField())


class PercentileDisc(Aggregate):
    """PostgreSQL's nearest-rank percentile (aggregates over the same ordering share one sort)."""

    function = "PERCENTILE_DISC"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra) -> None:
        super().__init__(expression, fraction=float(fraction), output_field=DurationField(), **extra)


def _seconds(value) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value / 1e6


def _percentiles(queryset, expression) -> dict[tuple, dict[int, float]]:
    """Nearest-rank percentiles of `expression` (a duration) per (lane, version), in seconds, without
    PERCENTILE_DISC (SQLite): rank the rows with window functions and keep the ranks wanted."""
    partition = [F(name) for name in GROUP]
    ranked = queryset.annotate(
        value=expression,
        rank=Window(RowNumber(), partition_by=partition, order_by=expression.asc()),
        size=Window(Count("id"), partition_by=partition),
    )
    wanted = Q()
    for q in PERCENTILES:
        wanted |= Q(rank=Ceil(F("size") * Value(q / 100)))
    result: dict[tuple, dict[int, float]] = {}
    for row in ranked.filter(wanted).values(*GROUP, "value", "rank", "size"):
        seconds = _seconds(row["value"])
        for q in PERCENTILES:
            if row["rank"] == max(1, math.ceil(row["size"] * q / 100)):
                result.setdefault((row["lane_id"], row["model_version_id"]), {})[q] = seconds
    return result


def run_duration() -> ExpressionWrapper:
    """A job's run time in SQL: started to finished, less the time it waited for its model to load (a cold
    start is not the lane's speed) and the time it was paused for a higher class."""
    load = ExpressionWrapper(
        (Coalesce(F("load_seconds"), Value(0.0)) + F("paused_seconds")) * Value(timedelta(seconds=1)),
        output_field=DurationField(),
    )
    return ExpressionWrapper(F("finished_at") - F("started_at") - load, output_field=DurationField())


def lane_stats(window: str = "5m", now=None) -> list[Stats]:
    span = WINDOWS[window]
    since = (now or timezone.now()) - span
    lanes = {lane.pk: lane for lane in Lane.objects.select_related("active_version")}
    versions = {v.pk: v for v in ModelVersion.objects.all()}
    stats: dict[tuple, Stats] = {}

    def entry(lane_id, version_id) -> Stats:
        key = (lane_id, version_id)
        if key not in stats:
            stats[key] = Stats(lanes[lane_id], versions.get(version_id), window_seconds=span.total_seconds())
        return stats[key]

    done = Job.objects.filter(finished_at__gte=since, state__in=(Job.State.SUCCEEDED, Job.State.FAILED))
    succeeded = Q(state=Job.State.SUCCEEDED)
    ran = Q(state=Job.State.SUCCEEDED, started_at__isnull=False)
    queue = ExpressionWrapper(F("started_at") - F("submitted_at"), output_field=DurationField())
    run = run_duration()
    percentiles = {}
    if connection.vendor == "postgresql":
        # One pass over the window: the percentiles ride along with the counts (FILTER clauses).
        for q in PERCENTILES:
            percentiles[f"queue_p{q}"] = PercentileDisc(queue, q / 100, filter=ran)
            percentiles[f"run_p{q}"] = PercentileDisc(run, q / 100, filter=ran)
    for row in (
        done.values(*GROUP)
        .annotate(
            finished=Count("id"),
            ok=Count("id", filter=succeeded),
            failed=Count("id", filter=Q(state=Job.State.FAILED)),
            ooms=Sum("oom_count"),
            preemptions=Sum("preemptions"),
            gpu=Sum("gpu_seconds", filter=succeeded),
            cpu=Count("id", filter=succeeded & Q(device="cpu")),
            cost=cost_expression(),
            **percentiles,
        )
        .order_by()
    ):
        s = entry(row["lane_id"], row["model_version_id"])
        s.finished, s.succeeded, s.failed = row["finished"], row["ok"], row["failed"]
        s.ooms, s.gpu_seconds, s.cost = row["ooms"] or 0, row["gpu"] or 0.0, row["cost"] or 0.0
        s.cpu_images, s.preemptions = row["cpu"], row["preemptions"] or 0
        if percentiles and row[f"run_p{PERCENTILES[0]}"] is not None:
            s.queue_s = {q: _seconds(row[f"queue_p{q}"]) for q in PERCENTILES}
            s.run_s = {q: _seconds(row[f"run_p{q}"]) for q in PERCENTILES}

    deferred = Q(deferred_at__isnull=False)
    for row in (
        Job.objects.filter(submitted_at__gte=since).filter(deferred).values(*GROUP).annotate(n=Count("id")).order_by()
    ):
        entry(row["lane_id"], row["model_version_id"]).deferrals = row["n"]

    if not percentiles:  # elsewhere (SQLite): ranked with window functions, one query per measure
        for key, values in _percentiles(done.filter(ran), queue).items():
            entry(*key).queue_s = values
        for key, values in _percentiles(done.filter(ran), run).items():
            entry(*key).run_s = values

    judged = Verification.objects.filter(finished_at__gte=since, lane__isnull=False)
    for row in judged.pass_rates():
        if row["lane_id"] in lanes:
            s = entry(row["lane_id"], row["model_version_id"])
            s.verified, s.verified_passed = row["total"], row["passed"]
    return sorted(stats.values(), key=lambda s: (s.lane.name, s.version.name if s.version else ""))


def version_stats(version: ModelVersion, window: str = "24h") -> list[Stats]:
    """The version's figures on each lane it served over the window."""
    return [s for s in lane_stats(window) if s.version is not None and s.version.pk == version.pk]
