"""Team quotas and budgets: concurrent jobs, GPU-seconds per day, spend per month, lanes denied.

Every limit is optional and has a soft and a hard value (TeamQuota). A brief of a team at or
over a hard limit is refused (a REJECTED job saying which limit, the usage and when it
resets: a form error in the console, 429 in the API); at or over a soft limit it is deferred
(Job.Deferral.QUOTA) and released in its lane's next off-peak release window, or once the
team is back under its soft limits. A lane the team is denied refuses its briefs outright.

Days and months are the deployment's (TIME_ZONE): GPU-seconds per day count the team's jobs
that finished since local midnight, spend per month their cost (lanes.stats, the price the
console shows) since the first of the month. A team without a quota row has no limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Team

from .models import AuditEvent, Job, Lane, TeamQuota
from .stats import cost_expression


@dataclass(frozen=True)
class Limit:
    key: str
    label: str
    soft: float | None
    hard: float | None
    used: float
    resets_at: datetime | None  # None: as the team's jobs finish

    def over(self, kind: str) -> bool:
        value = self.soft if kind == "soft" else self.hard
        return value is not None and self.used >= value

    @property
    def shown_used(self) -> str:
        return _number(self.used, self.key)

    @property
    def shown_soft(self) -> str:
        return self.shown("soft")

    @property
    def shown_hard(self) -> str:
        return self.shown("hard")

    @property
    def over_hard(self) -> bool:
        return self.over("hard")

    def shown(self, kind: str) -> str:
        value = self.soft if kind == "soft" else self.hard
        return "—" if value is None else _number(value, self.key)

    @property
    def percent(self) -> int | None:
        """Usage against the tighter limit set, for a meter."""
        cap = min(v for v in (self.soft, self.hard, math.inf) if v is not None)
        if cap is math.inf:
            return None
        return 100 if cap == 0 else min(100, int(100 * self.used / cap))

    @property
    def resets(self) -> str:
        if self.resets_at is None:
            return "as the team's running and queued jobs finish"
        return f"at {timezone.localtime(self.resets_at):%Y-%m-%d %H:%M %Z}"

    def describe(self, team: str, kind: str) -> str:
        return (
            f"team {team} is at its {kind} limit of {self.shown(kind)} {self.label} "
            f"(used {self.shown_used}); it resets {self.resets}"
        )

    def seconds_to_reset(self, now: datetime) -> int | None:
        if self.resets_at is None:
            return None
        return max(1, math.ceil((self.resets_at - now).total_seconds()))


def _number(value: float, key: str) -> str:
    if key == "spend_month":
        return f"{value:.2f}"
    return f"{value:.0f}" if key == "max_concurrent" else f"{value:.1f}"


@dataclass(frozen=True)
class TeamUsage:
    team: str
    quota: TeamQuota
    limits: list[Limit]

    def over(self, kind: str) -> Limit | None:
        return next((limit for limit in self.limits if limit.over(kind)), None)


def day_start(now: datetime) -> datetime:
    return timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def _next_day(start: datetime) -> datetime:
    # Local midnight to local midnight: add a day in the calendar, not 24 hours (DST days are 23 or 25).
    tz = start.tzinfo
    naive = start.replace(tzinfo=None)
    return timezone.make_aware(datetime.fromordinal(naive.toordinal() + 1), tz)


def _next_month(start: datetime) -> datetime:
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return timezone.make_aware(datetime(year, month, 1), start.tzinfo)


def team_usage(team_id: int | None, now: datetime | None = None) -> TeamUsage | None:
    """The team's usage against its quota (None: no quota row, so no limits)."""
    if team_id is None:
        return None
    quota = TeamQuota.objects.select_related("team").filter(team_id=team_id).first()
    if quota is None:
        return None
    now = now or timezone.now()
    jobs = Job.objects.filter(team_id=team_id)
    limits = []
    if quota.max_concurrent_soft is not None or quota.max_concurrent_hard is not None:
        live = jobs.filter(state__in=(Job.State.QUEUED, Job.State.RUNNING)).count()
        limits.append(
            Limit("max_concurrent", "concurrent jobs", quota.max_concurrent_soft, quota.max_concurrent_hard, live, None)
        )
    if quota.gpu_seconds_day_soft is not None or quota.gpu_seconds_day_hard is not None:
        today = day_start(now)
        used = jobs.filter(finished_at__gte=today).aggregate(s=Sum("gpu_seconds"))["s"] or 0.0
        limits.append(
            Limit(
                "gpu_seconds_day",
                "GPU-seconds per day",
                quota.gpu_seconds_day_soft,
                quota.gpu_seconds_day_hard,
                used,
                _next_day(today),
            )  # fmt: skip
        )
    if quota.spend_month_soft is not None or quota.spend_month_hard is not None:
        month = month_start(now)
        spent = jobs.filter(finished_at__gte=month).aggregate(c=cost_expression())["c"] or 0.0
        limits.append(
            Limit(
                "spend_month",
                "spend per month",
                quota.spend_month_soft,
                quota.spend_month_hard,
                spent,
                _next_month(month),
            )  # fmt: skip
        )
    return TeamUsage(team=quota.team.name, quota=quota, limits=limits)


def denied(team_id: int | None, lane: Lane) -> bool:
    if team_id is None:
        return False
    return TeamQuota.objects.filter(team_id=team_id, denied_lanes=lane).exists()


def under_soft_limits(team_ids: set[int | None], now: datetime | None = None) -> set[int | None]:
    """Those of the teams that are under all their soft limits now (a team without a quota always is)."""
    return {team for team in team_ids if (usage := team_usage(team, now)) is None or usage.over("soft") is None}


QUOTA_FIELDS = (
    "weight", "max_concurrent_soft", "max_concurrent_hard", "gpu_seconds_day_soft", "gpu_seconds_day_hard",
    "spend_month_soft", "spend_month_hard",
)  # fmt: skip


def quota_state(quota: TeamQuota | None) -> dict:
    """A quota as the audit log records it ({} for none)."""
    if quota is None or quota.pk is None:
        return {}
    return {
        **{field: getattr(quota, field) for field in QUOTA_FIELDS},
        "denied_lanes": sorted(lane.name for lane in quota.denied_lanes.all()),
    }


def set_quota(team: Team, values: dict | None, denied: list[Lane], by) -> TeamQuota | None:
    """Give a team these weight and limits (None: remove its quota row, so it has weight 1 and no limits),
    audited as `team.quota`. The values are validated by the caller (the console's form)."""
    with transaction.atomic():
        quota = TeamQuota.objects.select_for_update().filter(team=team).first()
        before = quota_state(quota)
        if values is None:
            if quota is not None:
                quota.delete()
            quota = None
        else:
            quota = quota or TeamQuota(team=team)
            for field in QUOTA_FIELDS:
                setattr(quota, field, values.get(field, 1.0 if field == "weight" else None))
            quota.full_clean()
            quota.save()
            quota.denied_lanes.set(denied)
        after = quota_state(quota)
        if after != before:
            AuditEvent.record(by, "team.quota", target=team.name, before=before, after=after)
    return quota
