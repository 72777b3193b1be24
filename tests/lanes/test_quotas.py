"""Team quotas: hard limits refuse (console and API), soft limits defer, and limits reset."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Team
from lanes import quotas
from lanes.actions import BriefRejected, submit_brief
from lanes.dispatch import release_deferred
from lanes.models import Job, Lane, LaneWindow, TeamQuota
from tests.conftest import make_user
from tests.lanes.usage import used

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(demo_lanes):
    return make_user("casey", team=Team.objects.create(name="studio"))


def quota(user, **limits) -> TeamQuota:
    return TeamQuota.objects.create(team=user.member.team, **limits)


def brief(user, prompt="poster", intent="draft", **kw) -> Job:
    return submit_brief(user, prompt=prompt, intent=intent, **kw)


def api_post(client, user, body):
    secret = ApiToken.issue(user, "script")[1]
    return client.post("/api/v1/jobs", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")


def test_a_team_without_a_quota_behaves_as_today(member):
    used(member, 10_000.0)
    job = brief(member)
    assert (job.state, job.admission, job.deferral) == ("queued", "admitted", "")
    assert quotas.team_usage(member.member.team_id) is None


def test_over_a_hard_day_limit_a_brief_is_refused_saying_the_limit_the_usage_and_the_reset(member, client):
    quota(member, gpu_seconds_day_hard=10)
    used(member, 12.0, ago=timedelta(0))
    tomorrow = timezone.localtime(timezone.now()).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    said = f"at its hard limit of 10.0 GPU-seconds per day (used 12.0); it resets at {tomorrow:%Y-%m-%d %H:%M %Z}"

    refused = api_post(client, member, {"prompt": "one more", "intent": "draft"})
    assert refused.status_code == 429, refused.content
    assert said in refused.json()["detail"]
    seconds_left = (tomorrow - timezone.now()).total_seconds()
    assert abs(int(refused["Retry-After"]) - seconds_left) < 120
    assert Job.objects.get(prompt="one more").state == Job.State.REJECTED  # on record, never queued

    client.force_login(member)
    page = client.post(reverse("brief-new"), {"prompt": "from the form", "intent": "draft"})
    assert page.status_code == 429 and said in page.text


def test_the_day_and_month_limits_reset_at_local_midnight(member, settings):
    settings.TIME_ZONE = "America/New_York"
    quota(member, gpu_seconds_day_hard=10, spend_month_hard=1.0)
    used(member, 3600.0, ago=timedelta(0), gpu_name="")  # an hour at the default price: 2.50
    now = timezone.now()
    usage = quotas.team_usage(member.member.team_id, now)
    assert usage is not None
    over = usage.over("hard")
    assert over is not None and over.key == "gpu_seconds_day"
    day, month = usage.limits
    assert timezone.localtime(day.resets_at).hour == 0 and day.resets_at > now
    assert timezone.localtime(month.resets_at).day == 1 and month.used == pytest.approx(2.5)
    # A frozen clock past each reset: the day's usage is gone after midnight, the month's after the 1st.
    after_midnight = quotas.team_usage(member.member.team_id, day.resets_at + timedelta(seconds=1))
    assert after_midnight is not None and [limit.used for limit in after_midnight.limits][0] == 0.0
    next_month = quotas.team_usage(member.member.team_id, month.resets_at + timedelta(seconds=1))
    assert next_month is not None and next_month.over("hard") is None
    # And for real: the usage moved to yesterday, the next brief goes through.
    Job.objects.filter(prompt="earlier work").update(finished_at=now - timedelta(days=1, hours=1))
    if timezone.localtime(now).day == 1:  # yesterday was last month: the spend reset too
        assert brief(member).state == Job.State.QUEUED
    else:
        Job.objects.filter(prompt="earlier work").update(gpu_seconds=100.0)  # within the month's budget
        assert brief(member).state == Job.State.QUEUED


def test_over_a_soft_concurrency_limit_work_is_deferred_until_the_team_is_back_under(member):
    quota(member, max_concurrent_soft=2)
    lane = Lane.objects.get(name="fast-draft")
    first, second = brief(member, "one"), brief(member, "two")
    third = brief(member, "three")
    assert (first.state, second.state) == ("queued", "queued")
    assert (third.state, third.deferral) == (Job.State.DEFERRED, Job.Deferral.QUOTA)
    assert "team studio is at its soft limit of 2 concurrent jobs (used 2)" in third.admission_reason
    assert release_deferred(lane) == []  # still at the limit
    first.cancel()
    assert [job.pk for job in release_deferred(lane)] == [third.pk]


def test_over_a_soft_spend_limit_work_waits_for_the_lanes_release_window(member):
    quota(member, spend_month_soft=1.0, spend_month_hard=100.0)
    used(member, 3600.0, ago=timedelta(0), gpu_name="")  # 2.50 spent
    lane = Lane.objects.get(name="fast-draft")
    later = (timezone.localtime(timezone.now()).hour + 12) % 24  # a window that is not open now
    window = LaneWindow.objects.create(lane=lane, mode=LaneWindow.Mode.RELEASE, cron=f"0 {later} * * *", minutes=60)
    job = brief(member)
    assert (job.state, job.deferral) == (Job.State.DEFERRED, Job.Deferral.QUOTA)
    assert "soft limit of 1.00 spend per month (used 2.50)" in job.admission_reason
    assert "deferred until its lane's off-peak window at " in job.admission_reason
    assert f"{later:02d}:00" in job.admission_reason
    assert release_deferred(lane) == []
    window.cron, window.minutes = "* * * * *", 1  # open now: the scheduled pool takes it, over the soft limit or not
    window.save()
    assert [j.pk for j in release_deferred(lane)] == [job.pk]


def test_over_a_hard_concurrency_limit_the_api_answers_429(member, client):
    quota(member, max_concurrent_hard=1)
    assert api_post(client, member, {"prompt": "one", "intent": "draft"}).status_code == 202
    refused = api_post(client, member, {"prompt": "two", "intent": "draft"})
    assert refused.status_code == 429
    detail = refused.json()["detail"]
    assert "hard limit of 1 concurrent jobs (used 1); it resets as the team's running and queued jobs finish" in detail


def test_a_denied_lane_refuses_the_teams_briefs(member, client):
    quota(member).denied_lanes.add(Lane.objects.get(name="final-render"))
    with pytest.raises(BriefRejected, match="may not use lane final-render"):
        brief(member, intent="final")
    assert brief(member).state == Job.State.QUEUED  # other lanes are open to it
    client.force_login(member)
    page = client.post(reverse("brief-new"), {"prompt": "final one", "intent": "final"})
    assert page.status_code == 400 and "may not use lane final-render" in page.text
    refused = api_post(client, member, {"prompt": "final two", "intent": "final"})
    assert refused.status_code == 422 and "may not use lane final-render" in refused.json()["detail"]
    assert not Job.objects.filter(prompt__startswith="final").exists()


def test_the_home_page_shows_the_teams_usage_against_its_quotas(member, client):
    quota(member, weight=2, max_concurrent_soft=3, gpu_seconds_day_soft=50, gpu_seconds_day_hard=60)
    used(member, 12.0, ago=timedelta(0))
    brief(member)
    client.force_login(member)
    page = client.get(reverse("job-list"))
    assert page.status_code == 200
    text = page.text
    assert "Team studio: usage against its quotas" in text and "Fair-share weight 2." in text
    assert "<td>concurrent jobs</td>" in text and "<td>GPU-seconds per day</td>" in text
    assert "12.0" in text and "50.0" in text and "60.0" in text and 'value="24"' in text  # 12 of the soft 50


def test_a_team_without_a_quota_sees_no_usage_panel(member, client):
    client.force_login(member)
    assert "team-usage" not in client.get(reverse("job-list")).text


def test_quota_deferred_work_is_released_one_at_a_time_as_the_team_gets_back_under(member):
    quota(member, max_concurrent_soft=1)
    lane = Lane.objects.get(name="fast-draft")
    first = brief(member, "one")
    waiting = [brief(member, f"waiting {i}") for i in range(3)]
    assert {job.deferral for job in waiting} == {Job.Deferral.QUOTA}
    first.cancel()
    assert [job.pk for job in release_deferred(lane)] == [waiting[0].pk]  # not all three: that would be 3 of 1
    assert release_deferred(lane) == []  # at the limit again
