"""The policy YAML's teams: section and route windows: applied atomically, refused with line numbers."""

import textwrap

import pytest

from accounts.models import Team
from lanes import policy
from lanes.models import AuditEvent, LaneWindow, TeamQuota

pytestmark = pytest.mark.django_db

ROUTES = textwrap.dedent(
    """\
    routes:
      - name: fast_draft
        model: demo-tiny-sd-v1
        windows:
          - {cron: "0 22 * * *", minutes: 480, mode: release, timezone: Europe/Paris}
          - {cron: "0 12 * * 1-5", minutes: 60, mode: background-only}
      - name: final_render
        model: demo-tiny-sd-v1
    intents:
      draft: fast_draft
      final: final_render
    """
)
TEAMS = textwrap.dedent(
    """\
    teams:
      studio:
        weight: 2
        max_concurrent_jobs: 8
        gpu_seconds_per_day: {soft: 3000, hard: 3600}
        spend_per_month: {soft: 80, hard: 100}
        denied_lanes: [final_render]
      agency:
        weight: 0.5
    """
)


@pytest.fixture
def teams(demo_lanes):
    return Team.objects.create(name="studio"), Team.objects.create(name="agency")


def test_teams_and_windows_are_applied_exported_and_audited(teams):
    diff = policy.apply(ROUTES + TEAMS)
    assert diff.changed_teams == ["agency", "studio"]
    assert "changed team quotas: agency, studio" in diff.summary()
    studio = TeamQuota.objects.get(team__name="studio")
    assert (studio.weight, studio.max_concurrent_soft, studio.max_concurrent_hard) == (2.0, None, 8)
    assert (studio.gpu_seconds_day_soft, studio.gpu_seconds_day_hard) == (3000.0, 3600.0)
    assert (studio.spend_month_soft, studio.spend_month_hard) == (80.0, 100.0)
    assert [lane.name for lane in studio.denied_lanes.all()] == ["final_render"]
    assert TeamQuota.objects.get(team__name="agency").gpu_seconds_day_hard is None
    windows = {(w.lane.name, w.mode, w.cron, w.minutes, w.timezone) for w in LaneWindow.objects.all()}
    assert windows == {
        ("fast_draft", "release", "0 22 * * *", 480, "Europe/Paris"),
        ("fast_draft", "background-only", "0 12 * * 1-5", 60, ""),
    }
    assert AuditEvent.objects.filter(action="policy.team", target="studio").count() == 1

    exported = policy.export()
    assert "teams:" in exported and "denied_lanes:\n    - final_render" in exported
    assert policy.apply(exported).is_empty  # export → apply changes nothing

    # The file replaces the whole policy: a team left out loses its quota row, a lane its windows.
    diff = policy.apply(ROUTES.replace('      - {cron: "0 12 * * 1-5", minutes: 60, mode: background-only}\n', ""))
    assert diff.changed_teams == ["agency", "studio"]
    assert not TeamQuota.objects.exists()
    assert LaneWindow.objects.count() == 1


@pytest.mark.parametrize(
    "text, errors",
    [
        (
            ROUTES + TEAMS.replace("max_concurrent_jobs: 8", "max_concurrent_jobs: -1"),
            ["line 15: max_concurrent_jobs must be at least 0, not -1"],
        ),
        (ROUTES + TEAMS.replace("weight: 0.5", "weight: 0"), ["line 20: team 'agency': weight must be above 0, not 0"]),
        (
            ROUTES + TEAMS.replace("agency:", "nobody:"),
            ["line 19: unknown team 'nobody' (teams are created in the admin)"],
        ),
        (
            ROUTES + TEAMS.replace("[final_render]", "[final_render, nowhere]"),
            ["line 18: team 'studio': denied lane 'nowhere' is not a route in this policy"],
        ),
        (
            ROUTES + TEAMS.replace("{soft: 3000, hard: 3600}", "{soft: 4000, hard: 3600}"),
            ["line 16: team 'studio': gpu_seconds_per_day soft limit 4000 is above its hard 3600"],
        ),
        (
            ROUTES.replace('"0 12 * * 1-5", minutes: 60', '"30 22 * * *", minutes: 60'),
            ["line 6: route 'fast_draft': the window overlaps another", "(the window on line 5)"],
        ),
        (
            ROUTES.replace('"0 12 * * 1-5", minutes: 60', '"0 * * * *", minutes: 90'),
            ["line 6: route 'fast_draft': the window overlaps itself"],
        ),
        (
            ROUTES.replace("minutes: 60", "minutes: 0"),
            ["line 6: route 'fast_draft': the window is empty: it must last at least 1 minute"],
        ),
        (
            ROUTES.replace("Europe/Paris", "Mars/Olympus_Mons"),
            ["line 5: route 'fast_draft': time zone 'Mars/Olympus_Mons' does not exist"],
        ),
        (
            ROUTES.replace('"0 22 * * *"', '"0 25 * * *"'),
            ["line 5: route 'fast_draft': cron '0 25 * * *': Invalid end range: 25 > 23."],
        ),
        (
            ROUTES.replace('"0 22 * * *"', '"0 0 30 2 *"'),
            ["line 5: route 'fast_draft': cron '0 0 30 2 *'"],
        ),
        (ROUTES.replace("mode: release", "mode: sometimes"), ["line 5: window mode must be one of"]),
        (ROUTES.replace("mode: release, ", ""), ["line 5: a window needs cron, minutes and mode"]),
        (ROUTES + TEAMS.replace("weight: 2", "colour: red"), ["line 14: unknown team key 'colour'"]),
    ],
)
def test_bad_teams_or_windows_change_nothing_and_say_where(teams, text, errors):
    policy.apply(ROUTES + TEAMS)
    before = policy.export()
    with pytest.raises(policy.PolicyError) as caught:
        policy.apply(text)
    message = "\n".join(caught.value.errors)
    for error in errors:
        assert error in message
    assert policy.export() == before
