"""The Teams page in the browser: ops set a team's quota and see it saved; a bad value is
refused next to its field, and the quota stays as it was."""

import pytest
from playwright.sync_api import expect

from accounts.models import Team
from lanes.models import AuditEvent, TeamQuota
from tests.conftest import make_user
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_ops_set_a_teams_quota_and_see_it_saved(demo_lanes, live_server_url, page):
    make_user("olive", "ops")
    team = Team.objects.create(name="studio")
    log_in(page, live_server_url, "olive", "/teams/")
    section = page.locator(f"#team-{team.pk}")
    expect(section).to_contain_text("no quota: weight 1, no limits")

    section.locator(f"input[name=team{team.pk}-weight]").fill("2")
    section.locator(f"input[name=team{team.pk}-gpu_seconds_day_hard]").fill("7200")
    section.locator("button:has-text('Save quota')").click()

    expect(page.locator(".flash.success")).to_contain_text("Team studio: quota saved.")
    expect(page).to_have_url(f"{live_server_url}/teams/")
    section = page.locator(f"#team-{team.pk}")
    expect(section.locator("h2")).not_to_contain_text("no quota")
    expect(section.locator("table")).to_contain_text("GPU-seconds per day")
    expect(section.locator("table")).to_contain_text("7200.0")
    expect(section.locator(f"input[name=team{team.pk}-gpu_seconds_day_hard]")).to_have_value("7200.0")
    quota = TeamQuota.objects.get(team=team)
    assert (quota.weight, quota.gpu_seconds_day_hard, quota.spend_month_hard) == (2.0, 7200.0, None)


def test_a_negative_limit_is_refused_next_to_its_field_and_nothing_changes(demo_lanes, live_server_url, page):
    make_user("olive", "ops")
    team = Team.objects.create(name="studio")
    TeamQuota.objects.create(team=team, spend_month_hard=100.0)
    log_in(page, live_server_url, "olive", "/teams/")
    section = page.locator(f"#team-{team.pk}")

    section.locator(f"input[name=team{team.pk}-spend_month_hard]").fill("-5")
    section.locator("button:has-text('Save quota')").click()

    flash = page.locator(".flash.error")
    expect(flash).to_contain_text("Nothing changed")
    expect(flash).to_contain_text("Spend per month (hard)")
    field = page.locator(f"#team-{team.pk} .field.invalid")
    expect(field).to_have_count(1)
    expect(field).to_contain_text("greater than or equal to 0")
    expect(field.locator("input")).to_have_value("-5")  # what was typed stays, to be corrected
    assert "__all__" not in page.content()
    expect(page.locator(f"#team-{team.pk} table")).to_contain_text("100.00")  # the saved limit, unchanged

    assert TeamQuota.objects.get(team=team).spend_month_hard == 100.0
    assert not AuditEvent.objects.filter(action="team.quota").exists()
