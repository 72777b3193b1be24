"""The Teams page: ops set a team's weight and quotas in the console; creatives may not."""

import pytest
from django.urls import reverse

from accounts.models import Team
from lanes.models import AuditEvent, Lane, TeamQuota
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(demo_lanes):
    return Team.objects.create(name="studio")


def form(team, **values) -> dict:
    data = {f"team{team.pk}-weight": "1"}
    data.update({f"team{team.pk}-{key}": value for key, value in values.items()})
    return data


def test_only_ops_and_admins_see_and_edit_teams(team, client):
    url, post = reverse("team-list"), reverse("team-quota", args=[team.pk])
    assert client.get(url).status_code == 302  # to the login page
    for role, status in (("creative", 403), ("ops", 200), ("admin", 200)):
        client.force_login(make_user(f"user-{role}", role, team))
        assert client.get(url).status_code == status
        answer = client.post(post, form(team, weight="3"))
        assert answer.status_code == (403 if role == "creative" else 302)
    assert TeamQuota.objects.get(team=team).weight == 3.0


def test_ops_save_a_quota_that_admission_then_applies_and_can_remove_it(team, ops_client):
    final = Lane.objects.get(name="final-render")
    answer = ops_client.post(
        reverse("team-quota", args=[team.pk]),
        form(team, weight="2", max_concurrent_hard="4", gpu_seconds_day_soft="100", denied_lanes=[final.pk]),
    )
    assert answer.status_code == 302
    quota = TeamQuota.objects.get(team=team)
    assert (quota.weight, quota.max_concurrent_hard, quota.gpu_seconds_day_soft) == (2.0, 4, 100.0)
    assert list(quota.denied_lanes.all()) == [final]
    event = AuditEvent.objects.get(action="team.quota")
    assert event.target == "studio" and event.after["denied_lanes"] == ["final-render"]
    page = ops_client.get(reverse("team-list")).text
    assert "concurrent jobs" in page and "GPU-seconds per day" in page

    ops_client.post(reverse("team-quota", args=[team.pk]), {"clear": "1"})
    assert not TeamQuota.objects.exists()
    assert AuditEvent.objects.filter(action="team.quota").count() == 2


@pytest.mark.parametrize(
    "values, error",
    [
        ({"weight": "0"}, "The weight must be above 0."),
        ({"max_concurrent_hard": "-1"}, "greater than or equal to 0"),
        ({"spend_month_soft": "-5"}, "greater than or equal to 0"),
        ({"gpu_seconds_day_soft": "10", "gpu_seconds_day_hard": "5"}, "The soft limit is above the hard one."),
    ],
)
def test_a_bad_quota_is_refused_next_to_its_field_and_nothing_is_saved(team, ops_client, values, error):
    answer = ops_client.post(reverse("team-quota", args=[team.pk]), form(team, **values))
    assert answer.status_code == 400 and error in answer.text
    assert not TeamQuota.objects.exists()


def test_an_unknown_team_is_a_404(team, ops_client):
    assert ops_client.post(reverse("team-quota", args=[team.pk + 100]), form(team)).status_code == 404
