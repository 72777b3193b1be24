"""Off-peak windows with a frozen clock (every function takes `now`): open, next, and what admission does."""

from datetime import UTC, datetime, timedelta

import pytest

from lanes import windows
from lanes.admission import decide
from lanes.dispatch import release_deferred
from lanes.models import Job, Lane, LaneWindow, Priority

pytestmark = pytest.mark.django_db

# 2026-12-01 is a Tuesday; Paris is UTC+1 in December.
EVENING = datetime(2026, 12, 1, 21, 30, tzinfo=UTC)  # 22:30 in Paris
MORNING = datetime(2026, 12, 2, 5, 30, tzinfo=UTC)  # 06:30 in Paris
NOON = datetime(2026, 12, 1, 11, 15, tzinfo=UTC)


@pytest.fixture
def lane(demo_lanes):
    return Lane.objects.get(name="fast-draft")


def window(lane, mode, cron="0 22 * * *", minutes=480, zone="Europe/Paris") -> LaneWindow:
    return LaneWindow.objects.create(lane=lane, mode=mode, cron=cron, minutes=minutes, timezone=zone)


def test_a_window_opens_at_its_cron_time_in_its_zone_and_lasts_its_minutes(lane):
    night = window(lane, LaneWindow.Mode.RELEASE)
    opening = windows.current(night, EVENING)
    assert opening is not None
    assert opening.opens == datetime(2026, 12, 1, 21, 0, tzinfo=UTC)  # 22:00 Paris
    assert opening.closes == datetime(2026, 12, 2, 5, 0, tzinfo=UTC)  # eight hours later
    assert windows.current(night, MORNING) is None
    assert windows.upcoming(night, MORNING).opens == datetime(2026, 12, 2, 21, 0, tzinfo=UTC)
    assert windows.next_window(lane, now=NOON).opens == datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    # The deployment's zone when the window names none.
    utc = window(lane, LaneWindow.Mode.RELEASE, cron="0 12 * * 1-5", minutes=30, zone="")
    assert windows.current(utc, NOON) is None and windows.current(utc, NOON + timedelta(hours=1)) is not None
    assert windows.current(utc, NOON + timedelta(hours=2)) is None
    assert windows.upcoming(utc, NOON + timedelta(hours=1)).opens == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert windows.upcoming(utc, datetime(2026, 12, 4, 13, tzinfo=UTC)).opens.day == 7  # Friday → Monday


def test_in_a_background_only_window_other_work_goes_to_the_fallback_or_is_refused(lane):
    window(lane, LaneWindow.Mode.BACKGROUND_ONLY)
    rerouted = decide(lane, Priority.STANDARD, now=EVENING)
    assert (rerouted.state, rerouted.admission, rerouted.lane.name) == ("queued", "rerouted", "fallback")
    assert "lane fast-draft takes background work only until 06:00 CET → fallback fallback" in rerouted.reason
    background = decide(lane, Priority.BACKGROUND, now=EVENING)
    assert (background.state, background.lane.name) == ("queued", "fast-draft")
    assert decide(lane, Priority.STANDARD, now=NOON).lane.name == "fast-draft"  # outside the window

    Lane.objects.filter(pk=lane.pk).update(fallback=None)
    lane.refresh_from_db()
    refused = decide(lane, Priority.CRITICAL, now=EVENING)
    assert refused.state == Job.State.REJECTED
    assert "takes background work only until 06:00 CET, and no fallback takes critical work" in refused.reason
    assert refused.retry_after == 7.5 * 3600  # until the window closes


def test_background_work_waits_for_a_release_window_which_releases_it(lane, creative):
    window(lane, LaneWindow.Mode.RELEASE)
    held = decide(lane, Priority.BACKGROUND, now=NOON)
    assert (held.state, held.deferral) == (Job.State.DEFERRED, Job.Deferral.OFF_PEAK)
    assert "background work on fast-draft waits for its off-peak window, next opens at 2026-12-01 22:00 CET" in (
        held.reason
    )
    assert decide(lane, Priority.STANDARD, now=NOON).state == Job.State.QUEUED  # only background work waits
    assert decide(lane, Priority.BACKGROUND, now=EVENING).state == Job.State.QUEUED  # in the window: admitted

    job = Job.objects.create(
        owner=creative, prompt="heavy pass", intent="preview", priority=Priority.BACKGROUND, lane=lane,
        model_version=lane.active_version, seed=1, width=64, height=64, steps=4, guidance=7.5,
        state=Job.State.DEFERRED, deferral=Job.Deferral.OFF_PEAK, deferred_at=NOON,
    )  # fmt: skip
    assert release_deferred(lane, now=NOON) == []
    assert [j.pk for j in release_deferred(lane, now=EVENING)] == [job.pk]


def test_overlapping_empty_and_impossible_windows_are_found():
    assert windows.check([("0 22 * * *", 480, "Europe/Paris"), ("0 12 * * *", 60, "UTC")], EVENING) == []
    [(index, message, other)] = windows.check([("0 22 * * *", 480, "UTC"), ("0 5 * * *", 60, "UTC")], EVENING)
    assert (index, other) == (1, 0) and "overlaps another" in message
    [(index, message, other)] = windows.check([("*/10 * * * *", 15, "UTC")], EVENING)
    assert "overlaps itself" in message and other is None
    assert "empty" in windows.check([("0 1 * * *", 0, "UTC")], EVENING)[0][1]
    assert "does not exist" in windows.check([("0 1 * * *", 5, "Nowhere/Atlantis")], EVENING)[0][1]
    assert "five fields" in windows.check([("0 1 * *", 5, "UTC")], EVENING)[0][1]
    assert "never occurs" in windows.check([("0 0 30 2 *", 5, "UTC")], EVENING)[0][1]


def test_the_lane_page_says_when_the_next_window_opens(lane, ops_client):
    assert "No off-peak windows" in ops_client.get(f"/lanes/{lane.name}/").text
    window(lane, LaneWindow.Mode.RELEASE, cron="0 3 1 1 *", minutes=60, zone="UTC")  # once a year, 1 January
    page = ops_client.get(f"/lanes/{lane.name}/").text
    opens = windows.upcoming(LaneWindow.objects.get(), None).opens
    assert f"Next window opens at {opens:%Y}-01-01 03:00 UTC (releases deferred background work)." in page
