"""Weighted fair share between teams within a priority class.

The algorithm is start-time fair queueing on estimated GPU-seconds, with each team's usage
over a sliding window (FAIR_SHARE_WINDOW_SECONDS) as its starting virtual time:

- A team's usage U is the device-seconds (GPU-seconds, or CPU-seconds on a CPU worker) of its
  jobs that finished within the window, plus the time its running jobs have run so far. Its
  weight w comes from its TeamQuota row (1 without one; a team-less user's jobs share one
  bucket of weight 1).
- The k-th (0-based) waiting job of a team in a class on a lane gets the tag
  `(U + k × e) / w`, where e is the lane's estimated GPU-seconds per job (the mean of its last
  50 successes, 1 s before any). Within a team jobs keep their arrival order.
- Work of a class is served in tag order (ties: arrival). The classes themselves keep their
  strict order (critical, standard, background): fair share never lets a background job pass
  a standard one.

It is applied in three places: admission's "jobs ahead" count (a brief's own tag against
every other team's waiting jobs of its class), the order deferred work is released
(lanes.dispatch.release_deferred), and the job a worker runs when a slot frees: a broker
message of a lane and class is a turn of that lane and class, and the worker claims the
oldest queued job of the team whose tag is lowest. Every queued job still has its message:
a message whose job ran in another's turn runs the fairest waiting job instead, so the
count of messages never falls below the count of queued jobs, and the conditional claim
keeps any job from running twice.

Guarantees (when e is right): while two teams both have work waiting in a class, the
GPU-seconds each receives over the window stay in proportion to their weights, each
lagging its share by at most one job's GPU-seconds (the SFQ bound, from its start tags);
a team that used nothing recently has its next job served before any team that used more
than one job's worth; and a team alone on a lane is served FIFO, exactly as without fair
share. The bound is in estimated GPU-seconds: jobs much longer than e let a team run ahead
by the difference until the window forgets them. FAIR_SHARE=false restores FIFO in all
three places (the benchmark compares both).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Avg, Count, Min, Sum
from django.utils import timezone

from . import families
from .models import Job, Lane, Priority, TeamQuota

RECENT_RUNS = 50
DEFAULT_ESTIMATE_S = 1.0
CLASS_RANK: dict[str, int] = {Priority.CRITICAL: 0, Priority.STANDARD: 1, Priority.BACKGROUND: 2}


def enabled() -> bool:
    return settings.FAIR_SHARE


def usage(now: datetime | None = None) -> dict[int | None, float]:
    """Device-seconds per team (None: users without a team) over the sliding window, running jobs included."""
    now = now or timezone.now()
    since = now - timedelta(seconds=settings.FAIR_SHARE_WINDOW_SECONDS)
    used: dict[int | None, float] = defaultdict(float)
    finished = (
        Job.objects.filter(finished_at__gte=since, gpu_seconds__isnull=False)
        .values("team_id")
        .annotate(s=Sum("gpu_seconds"))
        .order_by()
    )
    for row in finished:
        used[row["team_id"]] += row["s"] or 0.0
    for team_id, started in Job.objects.filter(state=Job.State.RUNNING, started_at__isnull=False).values_list(
        "team_id", "started_at"
    ):
        used[team_id] += max(0.0, (now - max(started, since)).total_seconds())
    return used


def weights() -> dict[int | None, float]:
    return dict(TeamQuota.objects.values_list("team_id", "weight"))


def estimate(lane: Lane) -> float:
    """The lane's estimated GPU-seconds per job: the mean of its recent successes."""
    recent = (
        Job.objects.filter(lane=lane, state=Job.State.SUCCEEDED, gpu_seconds__isnull=False)
        .order_by("-finished_at")
        .values_list("pk", flat=True)[:RECENT_RUNS]
    )
    mean = Job.objects.filter(pk__in=list(recent)).aggregate(m=Avg("gpu_seconds"))["m"]
    return mean if mean and mean > 0 else DEFAULT_ESTIMATE_S


@dataclass(frozen=True)
class Shares:
    used: dict[int | None, float]
    weight_of: dict[int | None, float]
    per_job: float

    def tag(self, team_id: int | None, position: int = 0) -> float:
        """The virtual start time of a team's job with `position` of its jobs waiting before it."""
        return (self.used.get(team_id, 0.0) + position * self.per_job) / self.weight_of.get(team_id, 1.0)

    def jobs_before(self, tag: float, team_id: int | None, waiting: int) -> int:
        """How many of a team's `waiting` jobs have a tag at or below `tag` (they go first)."""
        weight = self.weight_of.get(team_id, 1.0)
        room = tag * weight - self.used.get(team_id, 0.0)
        if room < 0:
            return 0
        return min(waiting, int(room // self.per_job) + 1)


def shares(lane: Lane, now: datetime | None = None) -> Shares:
    return Shares(used=usage(now), weight_of=weights(), per_job=estimate(lane))


def _waiting_by_team(lane: Lane, priority: str) -> dict[int | None, int]:
    queued = Job.objects.filter(lane=lane, state=Job.State.QUEUED, priority=priority)
    rows = queued.values("team_id").annotate(n=Count("id")).order_by()
    return {row["team_id"]: row["n"] for row in rows}


def ahead_in_class(lane: Lane, priority: str, team_id: int | None) -> int:
    """Queued jobs of the brief's class on the lane that fair share serves before a new brief of `team_id`."""
    waiting = _waiting_by_team(lane, priority)
    own = waiting.get(team_id, 0)
    others = {team: n for team, n in waiting.items() if team != team_id}
    if not others:  # a team alone in its class: FIFO, and no need to read the shares
        return own
    fair = shares(lane)
    tag = fair.tag(team_id, own)
    return own + sum(fair.jobs_before(tag, team, n) for team, n in others.items())


def _same_queue_families(job: Job) -> list[str]:
    hosted = job.model_version.is_hosted
    return [name for name, family in families.FAMILIES.items() if family.local != hosted]


def in_turn(job: Job) -> list[int]:
    """The queued jobs a message for `job` may run, fairest team first: for each team waiting in its lane
    and class (and queue: hosted or local), the team's oldest job."""
    queued = Job.objects.filter(
        lane_id=job.lane_id,
        state=Job.State.QUEUED,
        priority=job.priority,
        model_version__family__in=_same_queue_families(job),
    )
    firsts = {row["team_id"]: row["first"] for row in queued.values("team_id").annotate(first=Min("id")).order_by()}
    if not firsts:
        return []
    if len(firsts) == 1:
        return list(firsts.values())
    fair = shares(job.lane)
    return [pk for team, pk in sorted(firsts.items(), key=lambda item: (fair.tag(item[0]), item[1]))]


def release_order(lane: Lane, deferred: list[Job]) -> list[Job]:
    """Deferred jobs in the order to release them: by class, then by tag, each team's continuing
    after its jobs already queued in that class."""
    if not deferred:
        return []
    fair = shares(lane)
    queued: dict[tuple[int | None, str], int] = {}
    counts = Job.objects.filter(lane=lane, state=Job.State.QUEUED).values("team_id", "priority").annotate(n=Count("id"))
    for row in counts.order_by():
        queued[(row["team_id"], row["priority"])] = row["n"]
    seen: dict[tuple[int | None, str], int] = defaultdict(int)
    tagged = []
    for job in deferred:  # in arrival order: a team's own jobs keep it
        key = (job.team_id, job.priority)
        tagged.append((CLASS_RANK[job.priority], fair.tag(job.team_id, queued.get(key, 0) + seen[key]), job.pk, job))
        seen[key] += 1
    return [job for *_, job in sorted(tagged, key=lambda item: item[:3])]
