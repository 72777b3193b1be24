"""Autoscaling signals per lane: queue depth by class, arrival and service rates, and desired workers.

How many workers a lane needs, from Little's law (L = λ·W) with headroom:

    S   = mean run time of the lane's jobs that succeeded in the window (seconds; none yet: the lane's SLO)
    λ   = arrivals per second: jobs submitted to the lane in the window (rejected ones excluded) / window
    Q   = jobs waiting now (queued + deferred), R = jobs running now
    c   = the lane's max_concurrency (jobs one worker runs at once)
    T   = the lane's latency SLO in seconds
    h   = SCALE_HEADROOM (default 1.25)

    busy slots      = λ·S          (Little's law: jobs in service at the arrival rate)
    backlog slots   = Q·S / T      (slots that clear today's queue within one SLO)
    desired workers = min(⌈hard_cap / c⌉, SCALE_MAX_WORKERS, max(⌈R / c⌉, ⌈h·(λ·S + Q·S/T) / c⌉))

The lane's hard_cap bounds its queued + running jobs, so more workers than ⌈hard_cap / c⌉ would idle.
A lane with nothing waiting, running or arriving wants 0 workers (an autoscaler's minimum decides
whether it keeps one warm), and no lane is scaled below the workers its running jobs occupy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Avg, Count, Q
from django.utils import timezone

from .models import Job, Lane, Priority


@dataclass(frozen=True)
class LaneSignal:
    lane: str
    queue_depth: dict[str, int]  # waiting jobs (queued + deferred) per priority class
    running: int
    arrival_rate: float  # jobs per second over the window
    service_rate: float  # jobs finished (succeeded or failed) per second over the window
    mean_run_seconds: float
    max_concurrency: int
    slo_seconds: float
    desired_workers: int

    def as_dict(self) -> dict:
        return asdict(self)


def desired_workers(
    *,
    arrival_rate: float,
    waiting: int,
    running: int,
    mean_run_seconds: float,
    max_concurrency: int,
    slo_seconds: float,
    hard_cap: int,
) -> int:
    """The formula of this module's docstring."""
    busy = arrival_rate * mean_run_seconds
    backlog = waiting * mean_run_seconds / slo_seconds
    wanted = math.ceil(round(settings.SCALE_HEADROOM * (busy + backlog) / max_concurrency, 9))
    cap = min(math.ceil(hard_cap / max_concurrency), settings.SCALE_MAX_WORKERS)
    return min(cap, max(math.ceil(running / max_concurrency), wanted))


def lane_signals(now=None) -> list[LaneSignal]:
    """One LaneSignal per lane, from three grouped queries over the jobs table."""
    now = now or timezone.now()
    window = settings.SCALE_WINDOW_SECONDS
    since = now - timedelta(seconds=window)
    waiting_states = (Job.State.QUEUED, Job.State.DEFERRED)

    live = (
        Job.objects.filter(state__in=(*waiting_states, Job.State.RUNNING))
        .values("lane_id", "state", "priority")
        .annotate(n=Count("id"))
        .order_by()
    )
    depth: dict[int, dict[str, int]] = {}
    running: dict[int, int] = {}
    for row in live:
        if row["state"] == Job.State.RUNNING:
            running[row["lane_id"]] = running.get(row["lane_id"], 0) + row["n"]
        else:
            by_class = depth.setdefault(row["lane_id"], {})
            by_class[row["priority"]] = by_class.get(row["priority"], 0) + row["n"]

    arrivals = dict(
        Job.objects.filter(submitted_at__gt=since, submitted_at__lte=now)
        .exclude(state=Job.State.REJECTED)
        .values("lane_id")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("lane_id", "n")
    )
    finished = {
        row["lane_id"]: row
        for row in Job.objects.filter(finished_at__gt=since, finished_at__lte=now)
        .values("lane_id")
        .annotate(
            done=Count("id", filter=Q(state__in=(Job.State.SUCCEEDED, Job.State.FAILED))),
            mean_run=Avg("run_seconds", filter=Q(state=Job.State.SUCCEEDED, run_seconds__isnull=False)),
        )
        .order_by()
    }

    signals = []
    for lane in Lane.objects.only("name", "max_concurrency", "latency_slo_ms", "hard_cap"):
        slo = lane.latency_slo_ms / 1000 or 1.0
        done = finished.get(lane.pk, {})
        mean_run = done.get("mean_run") or slo
        by_class = {p: depth.get(lane.pk, {}).get(p, 0) for p in Priority.values}
        arrival_rate = arrivals.get(lane.pk, 0) / window
        signals.append(
            LaneSignal(
                lane=lane.name,
                queue_depth=by_class,
                running=running.get(lane.pk, 0),
                arrival_rate=arrival_rate,
                service_rate=done.get("done", 0) / window,
                mean_run_seconds=mean_run,
                max_concurrency=lane.max_concurrency,
                slo_seconds=slo,
                desired_workers=desired_workers(
                    arrival_rate=arrival_rate,
                    waiting=sum(by_class.values()),
                    running=running.get(lane.pk, 0),
                    mean_run_seconds=mean_run,
                    max_concurrency=lane.max_concurrency,
                    slo_seconds=slo,
                    hard_cap=lane.hard_cap,
                ),
            )
        )
    return signals
