from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from lanes.actions import submit_brief
from lanes.admission import decide, pressure
from lanes.models import Job, Lane, Priority
from tests.conftest import running_worker, wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def draft_lane(demo_lanes):
    lane = Lane.objects.get(name="fast-draft")
    lane.defer_depth, lane.hard_cap = 3, 6
    lane.save()
    return lane


def brief(user, priority=None, **kw):
    return submit_brief(user, prompt="Burst", intent="draft", priority=priority, **kw)


def test_briefs_are_routed_by_intent(creative, demo_lanes):
    lanes = {intent: brief(creative).lane.name for intent in ["draft"]}
    lanes.update({i: submit_brief(creative, prompt="x", intent=i).lane.name for i in ["final", "preview", "fallback"]})
    assert lanes == {"draft": "fast-draft", "final": "final-render", "preview": "preview", "fallback": "fallback"}


def test_a_saturated_lane_defers_reroutes_admits_critical_and_rejects_past_the_hard_cap(creative, client, draft_lane):
    # No worker runs: the lane fills up exactly as it does when its GPUs are busy.
    first = [brief(creative) for _ in range(3)]
    assert [j.admission for j in first] == ["admitted"] * 3
    assert pressure(draft_lane).saturated

    rerouted = brief(creative)
    assert (rerouted.admission, rerouted.lane.name, rerouted.requested_lane.name) == (
        "rerouted",
        "fallback",
        "fast-draft",
    )
    assert (
        "fast-draft saturated (depth 3/3" in rerouted.admission_reason
        and "→ fallback fallback" in rerouted.admission_reason
    )

    deferred = [brief(creative, priority=Priority.BACKGROUND) for _ in range(2)]
    assert {(j.state, j.admission) for j in deferred} == {("deferred", "deferred")}
    assert all(j.dispatched_at is None for j in deferred)  # never sent to the broker

    critical = [brief(creative, priority=Priority.CRITICAL) for _ in range(3)]
    assert [j.admission for j in critical] == ["admitted"] * 3
    assert "critical, below the hard cap: depth" in critical[0].admission_reason

    client.force_login(creative)
    response = client.post(reverse("brief-new"), {"prompt": "One too many", "intent": "draft"})
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert "at its hard cap: depth 6/3 (hard cap 6)" in response.text
    rejected = Job.objects.get(prompt="One too many")
    assert (rejected.state, rejected.admission) == ("rejected", "rejected")
    assert rejected.dispatched_at is None

    # Drain: every admitted job finishes and the deferred ones are released oldest first.
    with running_worker():
        done = [wait_for_job(j.pk) for j in first + [rerouted] + critical + deferred]
    assert {j.state for j in done} == {"succeeded"}
    released = sorted(deferred, key=lambda j: Job.objects.get(pk=j.pk).dispatched_at)
    assert [j.pk for j in released] == [j.pk for j in deferred]
    oldest = Job.objects.get(pk=deferred[0].pk)
    assert oldest.deferred_at is not None and oldest.released_at >= oldest.deferred_at
    assert Job.objects.filter(pk__in=[j.pk for j in deferred], released_at__isnull=True).count() == 0


def test_a_lane_whose_recent_runs_break_its_slo_counts_as_saturated(creative, draft_lane):
    now = timezone.now()
    for i in range(5):
        Job.objects.create(
            owner=creative, prompt="slow", intent="draft", lane=draft_lane, model_version=draft_lane.active_version,
            seed=i, width=64, height=64, steps=4, guidance=7.5, state=Job.State.SUCCEEDED,
            started_at=now - timedelta(seconds=3), finished_at=now - timedelta(seconds=1),
        )  # fmt: skip
    load = pressure(draft_lane)
    assert load.depth == 0 and load.p95_run_s == pytest.approx(2.0)
    assert not load.saturated  # idle: a job would start at once, holding it back cannot help
    brief(creative), brief(creative)  # both slots taken
    load = pressure(draft_lane)
    assert load.depth == 2 and load.saturated and load.over_slo
    decision = decide(draft_lane, Priority.BACKGROUND)
    assert decision.state == Job.State.DEFERRED
    assert "p95 run 2000 ms, predicted 4000 ms vs SLO 1200 ms" in decision.reason


def test_with_admission_control_off_everything_is_queued(creative, draft_lane, settings):
    settings.ADMISSION_CONTROL = False
    jobs = [brief(creative, priority=Priority.BACKGROUND) for _ in range(8)]
    assert {(j.state, j.admission, j.lane.name) for j in jobs} == {("queued", "admitted", "fast-draft")}
    assert jobs[0].admission_reason == "admission control is off"


def test_deferred_work_is_released_by_beat_when_pressure_drops(creative, draft_lane):
    from lanes.tasks import release_deferred_jobs

    blockers = [brief(creative) for _ in range(3)]
    waiting = [brief(creative, priority=Priority.BACKGROUND) for _ in range(2)]
    assert release_deferred_jobs() == 0  # still saturated
    Job.objects.filter(pk__in=[j.pk for j in blockers]).update(state=Job.State.CANCELLED)
    assert release_deferred_jobs() == 2
    assert set(Job.objects.filter(pk__in=[j.pk for j in waiting]).values_list("state", flat=True)) == {"queued"}


def test_standard_work_waits_when_the_fallback_is_saturated_too(creative, draft_lane):
    Lane.objects.filter(name="fallback").update(defer_depth=1, hard_cap=5)
    [brief(creative) for _ in range(3)]  # fast-draft saturated
    assert brief(creative).lane.name == "fallback"  # fallback now saturated as well
    waiting = brief(creative)
    assert (waiting.state, waiting.admission, waiting.lane.name) == ("deferred", "deferred", "fast-draft")
    assert "fallback fallback saturated too" in waiting.admission_reason


def test_queued_background_work_does_not_push_standard_briefs_off_their_lane(creative, draft_lane):
    background = [brief(creative, priority=Priority.BACKGROUND) for _ in range(3)]
    assert [j.state for j in background] == ["queued"] * 3  # the lane had room for them
    assert pressure(draft_lane, Priority.BACKGROUND).saturated  # more background work would wait...
    standard = brief(creative)
    assert (standard.admission, standard.lane.name) == ("admitted", "fast-draft")  # ...standard work is served first
    assert "depth 0/3 (+3 lower-priority queued)" in standard.admission_reason
    Job.objects.filter(pk=background[0].pk).update(state=Job.State.RUNNING)  # a running job occupies a slot
    assert pressure(draft_lane, Priority.STANDARD).depth == 2
    assert [brief(creative).lane.name for _ in range(2)] == ["fast-draft", "fallback"]


def test_the_reason_counts_slots_in_words(draft_lane):
    Lane.objects.filter(pk=draft_lane.pk).update(max_concurrency=1)
    draft_lane.refresh_from_db()
    assert ", 1 slot" in pressure(draft_lane).describe() and "1 slots" not in pressure(draft_lane).describe()
    Lane.objects.filter(pk=draft_lane.pk).update(max_concurrency=2)
    draft_lane.refresh_from_db()
    assert ", 2 slots" in pressure(draft_lane).describe()


def test_admission_predicts_from_run_time_without_a_cold_starts_model_load(creative, draft_lane):
    from lanes.admission import recent_p95_run_s

    started = timezone.now() - timedelta(seconds=30)
    for i, (run, load) in enumerate([(9.474, 8.09)] + [(1.0, None)] * 9):
        Job.objects.create(owner=creative, prompt="p", intent="draft", lane=draft_lane,
                           model_version=draft_lane.active_version, seed=i, width=64, height=64, steps=4,
                           guidance=7.5, state="succeeded", submitted_at=started, started_at=started,
                           finished_at=started + timedelta(seconds=run), load_seconds=load)  # fmt: skip
    assert recent_p95_run_s(draft_lane) == pytest.approx(1.384)
    assert "p95 run 1384 ms" in pressure(draft_lane).describe()
    Job.objects.update(load_seconds=None)
    assert recent_p95_run_s(draft_lane) == pytest.approx(9.474)
