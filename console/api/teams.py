"""Teams' usage against their quotas: the figures the creative's home page and the Teams page show."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from ninja import Field, Path, Router, Schema

from lanes import quotas

from ..access import get_team_for_user
from .core import NO_NUL, errors

router = Router(tags=["teams"])

# Team names are free text (spaces allowed), unlike lane and version names.
TeamPath = Annotated[str, Path(pattern=NO_NUL, min_length=1, max_length=100)]


class LimitOut(Schema):
    key: Literal["max_concurrent", "gpu_seconds_day", "spend_month"]
    label: str
    used: float
    soft: float | None = Field(description="Over it, the team's briefs wait for off-peak (null: none).")
    hard: float | None = Field(description="Over it, the team's briefs are refused (null: none).")
    percent: int | None = Field(description="Usage against the tighter limit set, 0-100.")
    over_soft: bool
    over_hard: bool
    resets_at: datetime | None = Field(description="When the usage starts again from 0 (null: as jobs finish).")
    resets: str


class UsageOut(Schema):
    team: str
    has_quota: bool = Field(description="False: the team has weight 1 and no limits.")
    weight: float
    denied_lanes: list[str]
    limits: list[LimitOut]


def usage_out(team_name: str, usage: quotas.TeamUsage | None) -> dict:
    if usage is None:
        return {"team": team_name, "has_quota": False, "weight": 1.0, "denied_lanes": [], "limits": []}
    return {
        "team": team_name, "has_quota": True, "weight": usage.quota.weight,
        "denied_lanes": sorted(lane.name for lane in usage.quota.denied_lanes.all()),
        "limits": [
            {"key": limit.key, "label": limit.label, "used": limit.used, "soft": limit.soft, "hard": limit.hard,
             "percent": limit.percent, "over_soft": limit.over("soft"), "over_hard": limit.over("hard"),
             "resets_at": limit.resets_at, "resets": limit.resets}
            for limit in usage.limits
        ],
    }  # fmt: skip


@router.get("/teams/{name}/usage", response={200: UsageOut, **errors()})
def get_usage(request, name: TeamPath):
    """A team's usage against each of its limits, and when each resets: a creative reads their own team's,
    ops and admins any team's."""
    team = get_team_for_user(request, name)
    return usage_out(team.name, quotas.team_usage(team.pk))
