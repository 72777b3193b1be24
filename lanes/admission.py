"""Admission control: admit, defer, reroute or reject a brief from its lane's live pressure.

Pressure is read from the database (the truth): queued + running jobs on the lane, the
slots that serve it (its per-GPU cap times the live workers consuming its queue), and
the p95 of its recent run times. A lane is saturated for a brief when the jobs ahead of
it reach `defer_depth`, or when every slot is busy and it is predicted to finish past the
lane's SLO. Ahead of a brief are the running jobs and the queued jobs of its own or a
higher priority class: queued background work (an experiment, say) is served after
standard work by the broker and the worker's slots, so it does not push standard briefs
off their lane. The hard cap counts every queued and running job. Within its own class, a
brief is behind only the queued jobs fair share serves first (lanes.fairshare).

Before pressure, a brief meets its team's quota (lanes.quotas: a hard limit refuses it, a soft
one defers it) and its lane's off-peak windows (lanes.windows: a background-only window sends
other work to the fallback or refuses it; a lane with release windows holds background work
for them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from . import fairshare, quotas, windows
from .models import Job, Lane, LaneWindow, Priority, Worker
from .stats import nearest_rank

RECENT_RUNS = 50


@dataclass(frozen=True)
class Pressure:
    lane: Lane
    depth: int  # the jobs ahead of a brief of the class asked about
    capacity: int
    p95_run_s: float | None
    total: int = 0  # every queued and running job

    @property
    def predicted_s(self) -> float | None:
        """Predicted latency of a job admitted now: the waves ahead of it plus its own run."""
        if self.p95_run_s is None:
            return None
        return self.p95_run_s * (math.floor(self.depth / self.capacity) + 1)

    @property
    def over_slo(self) -> bool:
        """Jobs would queue, and the queue would push a new one past the SLO.

        With free slots a job runs at once, so holding it back cannot help its latency: a lane
        whose runs are simply slower than its SLO is not saturated while idle.
        """
        predicted = self.predicted_s
        return self.depth >= self.capacity and predicted is not None and predicted * 1000 > self.lane.latency_slo_ms

    @property
    def saturated(self) -> bool:
        return self.depth >= self.lane.defer_depth or self.over_slo

    @property
    def at_hard_cap(self) -> bool:
        return max(self.total, self.depth) >= self.lane.hard_cap

    def describe(self) -> str:
        behind = max(0, self.total - self.depth)
        parts = [
            f"depth {self.depth}/{self.lane.defer_depth}"
            + (f" (+{behind} lower-priority queued)" if behind else "")
            + f" (hard cap {self.lane.hard_cap})",
            f"{self.capacity} slot{'s' if self.capacity != 1 else ''}",
        ]
        predicted = self.predicted_s  # None exactly when p95_run_s is
        if self.p95_run_s is not None and predicted is not None:
            parts.append(
                f"p95 run {self.p95_run_s * 1000:.0f} ms, predicted {predicted * 1000:.0f} ms "
                f"vs SLO {self.lane.latency_slo_ms} ms"
            )
        return ", ".join(parts)

    def retry_after_s(self) -> int:
        per_job = self.p95_run_s or 1.0
        return max(1, math.ceil(per_job * (self.depth - self.lane.defer_depth + 1) / self.capacity))


# Worker liveness and recent run times change over seconds, not per request: each process
# keeps them this long. Queue depth, the number that moves with every brief, is always live.
SLOW_FIGURES_TTL = 1.0
_slow_figures: dict[tuple, tuple[float, object]] = {}


def _cached(key: tuple, compute):
    now = time.monotonic()
    hit = _slow_figures.get(key)
    if hit is None or now - hit[0] > SLOW_FIGURES_TTL:
        hit = _slow_figures[key] = (now, compute())
    return hit[1]


def recent_p95_run_s(lane: Lane) -> float | None:
    rows = list(
        Job.objects.filter(lane=lane, state=Job.State.SUCCEEDED, finished_at__isnull=False, started_at__isnull=False)
        .order_by("-finished_at")
        .values_list("started_at", "finished_at", "load_seconds", "paused_seconds")[:RECENT_RUNS]
    )
    if not rows:
        return None
    # A cold start's model load (or a pause for a higher class) is not what the next job will wait for.
    return nearest_rank(
        [
            max(0.0, (finished - started).total_seconds() - (load or 0.0) - paused)
            for started, finished, load, paused in rows
        ],
        95,
    )


# The classes a queued job must be in to be ahead of a brief of each class (keyed by str: the
# priority arrives as a field's value, not a Priority member).
AHEAD: dict[str, tuple[str, ...]] = {
    Priority.CRITICAL: (Priority.CRITICAL,),
    Priority.STANDARD: (Priority.CRITICAL, Priority.STANDARD),
    Priority.BACKGROUND: tuple(Priority.values),
}


NO_TEAM = object()  # pressure() asked without a team: every queued job of the class counts as ahead


def pressure(lane: Lane, priority: str = Priority.BACKGROUND, team_id=NO_TEAM) -> Pressure:
    """The lane's load as a brief of `priority` (and of `team_id`, for fair share in its class) sees it."""
    classes = AHEAD.get(priority, tuple(Priority.values))
    fair = team_id is not NO_TEAM and fairshare.enabled()
    if fair:  # its own class is counted by fair share below
        classes = tuple(c for c in classes if c != priority)
    ahead = Q(state=Job.State.RUNNING) | Q(priority__in=classes)
    counts = Job.objects.filter(lane=lane, state__in=(Job.State.QUEUED, Job.State.RUNNING)).aggregate(
        total=Count("id"), ahead=Count("id", filter=ahead)
    )
    if fair:
        counts["ahead"] += fairshare.ahead_in_class(lane, priority, team_id)
    workers = _cached(
        ("workers", lane.queue), lambda: Worker.objects.alive().filter(queues__contains=lane.queue).count()
    )
    p95 = _cached(("p95", lane.pk), lambda: recent_p95_run_s(lane))
    capacity = lane.max_concurrency * max(workers, 1)
    return Pressure(lane=lane, depth=counts["ahead"], capacity=capacity, p95_run_s=p95, total=counts["total"])


@dataclass(frozen=True)
class Decision:
    lane: Lane
    admission: str
    state: str
    reason: str
    retry_after: int | None = None
    deferral: str = ""


class NoLaneAvailable(Exception):
    pass


def enabled_lane(lane: Lane) -> tuple[Lane, list[str]]:
    """The lane itself if enabled, else the first enabled lane down its fallback chain."""
    hops, seen = [], {lane.pk}
    while not lane.enabled:
        hops.append(lane.name)
        fallback = lane.fallback
        if fallback is None or fallback.pk in seen:
            raise NoLaneAvailable(f"Lane {hops[0]!r} is disabled and no enabled fallback lane can take its briefs.")
        seen.add(fallback.pk)
        lane = fallback
    return lane, hops


def decide(lane: Lane, priority: str, team_id: int | None = None, now: datetime | None = None) -> Decision:
    now = now or timezone.now()
    lane, disabled = enabled_lane(lane)
    prefix = f"lane {' → '.join(disabled)} disabled → fallback {lane.name}; " if disabled else ""
    admitted = Job.Admission.REROUTED if disabled else Job.Admission.ADMITTED

    usage = quotas.team_usage(team_id, now)
    hard = usage.over("hard") if usage else None
    if usage and hard:
        retry = hard.seconds_to_reset(now) or math.ceil(_cached(("p95", lane.pk), lambda: recent_p95_run_s(lane)) or 1)
        return Decision(
            lane, Job.Admission.REJECTED, Job.State.REJECTED, prefix + hard.describe(usage.team, "hard"), retry
        )
    closed = windows.open_window(lane, LaneWindow.Mode.BACKGROUND_ONLY, now)
    if closed and priority != Priority.BACKGROUND:
        until = f"{closed.closes:%H:%M %Z}"  # in the window's own zone
        fallback = lane.fallback
        fallback_closed = fallback is not None and windows.open_window(fallback, LaneWindow.Mode.BACKGROUND_ONLY, now)
        if fallback is None or not fallback.enabled or fallback_closed:
            reason = f"lane {lane.name} takes background work only until {until}, and no fallback takes {priority} work"
            retry = max(1, math.ceil((closed.closes - now).total_seconds()))
            return Decision(lane, Job.Admission.REJECTED, Job.State.REJECTED, prefix + reason, retry)
        prefix += f"lane {lane.name} takes background work only until {until} → fallback {fallback.name}; "
        lane, admitted = fallback, Job.Admission.REROUTED
    soft = usage.over("soft") if usage else None
    if usage and soft:
        release = windows.next_window(lane, LaneWindow.Mode.RELEASE, now)
        when = (
            f"its lane's off-peak window at {release.opens:%Y-%m-%d %H:%M %Z}"
            if release
            else f"the limit resets {soft.resets}"
        )
        reason = f"{soft.describe(usage.team, 'soft')}; deferred until {when}"
        return Decision(lane, Job.Admission.DEFERRED, Job.State.DEFERRED, prefix + reason, None, Job.Deferral.QUOTA)
    if (
        priority == Priority.BACKGROUND
        and windows.has_release_windows(lane)
        and not windows.open_window(lane, LaneWindow.Mode.RELEASE, now)
    ):
        release = windows.next_window(lane, LaneWindow.Mode.RELEASE, now)
        assert release is not None  # the lane has release windows
        reason = (
            f"background work on {lane.name} waits for its off-peak window, "
            f"next opens at {release.opens:%Y-%m-%d %H:%M %Z}"
        )
        return Decision(lane, Job.Admission.DEFERRED, Job.State.DEFERRED, prefix + reason, None, Job.Deferral.OFF_PEAK)

    if not settings.ADMISSION_CONTROL:
        return Decision(lane, admitted, Job.State.QUEUED, prefix + "admission control is off")

    load = pressure(lane, priority, team_id)
    if load.at_hard_cap:
        return Decision(
            lane,
            Job.Admission.REJECTED,
            Job.State.REJECTED,
            prefix + f"lane {lane.name} at its hard cap: {load.describe()}",
            retry_after=load.retry_after_s(),
        )
    if priority == Priority.CRITICAL:
        return Decision(lane, admitted, Job.State.QUEUED, prefix + f"critical, below the hard cap: {load.describe()}")
    if not load.saturated:
        return Decision(lane, admitted, Job.State.QUEUED, prefix + f"{lane.name} has room: {load.describe()}")
    if priority == Priority.BACKGROUND:
        return Decision(
            lane,
            Job.Admission.DEFERRED,
            Job.State.DEFERRED,
            prefix + f"{lane.name} saturated, background work waits: {load.describe()}",
            deferral=Job.Deferral.PRESSURE,
        )
    fallback = lane.fallback
    if fallback is not None and fallback.enabled:
        fallback_load = pressure(fallback, priority, team_id)
        if not fallback_load.saturated:
            return Decision(
                fallback,
                Job.Admission.REROUTED,
                Job.State.QUEUED,
                prefix + f"{lane.name} saturated ({load.describe()}) → fallback {fallback.name} "
                f"({fallback_load.describe()})",
            )
        why = f"fallback {fallback.name} saturated too ({fallback_load.describe()})"
    else:
        why = "no enabled fallback"
    # Queueing it would only lengthen the line in front of critical work: it waits instead.
    reason = prefix + f"{lane.name} saturated ({load.describe()}), {why}; standard work waits"
    return Decision(lane, Job.Admission.DEFERRED, Job.State.DEFERRED, reason, deferral=Job.Deferral.PRESSURE)
