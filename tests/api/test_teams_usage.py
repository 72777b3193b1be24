"""GET /api/v1/teams/{name}/usage: a team's usage against its quotas, as the home page shows it."""

import html
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Team
from lanes import quotas
from lanes.models import Job, Lane, TeamQuota
from tests.conftest import make_user
from tests.lanes.usage import used

pytestmark = pytest.mark.django_db


def test_a_creative_reads_their_teams_usage_with_each_limit_and_its_reset(demo_lanes, users, callers, client):
    quota = TeamQuota.objects.create(
        team=users["creative"].member.team, weight=2.0, max_concurrent_hard=3, gpu_seconds_day_soft=10,
        gpu_seconds_day_hard=20, spend_month_hard=50.0,
    )  # fmt: skip
    quota.denied_lanes.set([Lane.objects.get(name="preview")])
    used(users["creative"], 12.0, ago=timedelta(0))

    response = callers["creative"].get("/teams/studio/usage")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["team"], body["has_quota"], body["weight"], body["denied_lanes"]) == ("studio", True, 2.0, ["preview"])
    limits = {limit["key"]: limit for limit in body["limits"]}
    assert set(limits) == {"max_concurrent", "gpu_seconds_day", "spend_month"}
    day = limits["gpu_seconds_day"]
    assert (day["used"], day["soft"], day["hard"], day["over_soft"], day["over_hard"]) == (12.0, 10, 20, True, False)
    assert day["percent"] == 100  # against the tighter limit, the soft one
    tomorrow = timezone.localtime(timezone.now()).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow += timedelta(days=1)
    assert abs(datetime.fromisoformat(day["resets_at"]) - tomorrow) < timedelta(hours=2)  # DST: 23 or 25 hours
    concurrent = limits["max_concurrent"]
    assert (concurrent["used"], concurrent["soft"], concurrent["hard"], concurrent["resets_at"]) == (0, None, 3, None)

    # The same figures the home page shows: one computation.
    usage = quotas.team_usage(quota.team_id)
    assert usage is not None
    assert [(limit["key"], limit["used"], limit["resets"]) for limit in body["limits"]] == [
        (limit.key, limit.used, limit.resets) for limit in usage.limits
    ]
    client.force_login(users["creative"])
    home = html.unescape(client.get(reverse("job-list")).text)
    assert all(limit["resets"] in home for limit in body["limits"])


def test_usage_counts_the_teams_live_jobs(demo_lanes, users, callers):
    TeamQuota.objects.create(team=users["creative"].member.team, max_concurrent_soft=1)
    job = used(users["creative"], 0.0)
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING, finished_at=None)
    (limit,) = callers["ops"].get("/teams/studio/usage").json()["limits"]
    assert (limit["key"], limit["used"], limit["over_soft"], limit["over_hard"]) == ("max_concurrent", 1, True, False)


def test_a_team_without_a_quota_row_has_weight_1_and_no_limits(users, callers):
    body = callers["creative"].get("/teams/studio/usage").json()
    assert body == {"team": "studio", "has_quota": False, "weight": 1.0, "denied_lanes": [], "limits": []}


def test_a_creative_cannot_read_another_teams_usage_but_ops_and_admins_can(users, callers):
    other = Team.objects.create(name="north shore")
    TeamQuota.objects.create(team=other, spend_month_hard=5.0)
    refused = callers["creative"].get("/teams/north shore/usage")
    # Another team's usage does not exist for a creative: the same 404 as a team that does not exist.
    assert refused.status_code == 404 and refused["Content-Type"] == "application/problem+json"
    assert refused.json() == callers["creative"].get("/teams/nobody/usage").json()
    for role in ("ops", "admin"):
        read = callers[role].get("/teams/north shore/usage")
        assert read.status_code == 200 and read.json()["limits"][0]["hard"] == 5.0
        assert callers[role].get("/teams/nobody/usage").status_code == 404


def test_a_creative_without_a_team_reads_no_team(callers):
    loner = make_user("lee")
    secret = ApiToken.issue(loner, "script")[1]
    response = callers[None].client.get("/api/v1/teams/studio/usage", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 404


def test_anonymous_callers_must_authenticate(callers):
    assert callers[None].get("/teams/studio/usage").status_code == 401
