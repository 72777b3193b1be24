"""Fair share between teams within a class: the worker's pick, admission's jobs ahead, release order."""

import pytest

from accounts.models import Team
from lanes.actions import submit_brief
from lanes.dispatch import release_deferred
from lanes.models import Job, Lane, Priority, TeamQuota
from tests.conftest import make_user, running_worker, wait_for_job
from tests.lanes.usage import used


@pytest.fixture
def teams(db):
    heavy, light = Team.objects.create(name="heavy"), Team.objects.create(name="light")
    return make_user("hana", team=heavy), make_user("lior", team=light)


@pytest.fixture
def one_slot(demo_lanes):
    Lane.objects.filter(name="fast-draft").update(max_concurrency=1, defer_depth=50, hard_cap=100)
    return Lane.objects.get(name="fast-draft")


def brief(user, prompt: str, priority=None) -> Job:
    return submit_brief(user, prompt=prompt, intent="draft", priority=priority)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fair", [True, False])
def test_a_worker_serves_the_team_that_used_less_first(teams, one_slot, settings, fair):
    settings.FAIR_SHARE = fair
    heavy, light = teams
    used(heavy, 100.0)  # on another lane: a team's share is of the whole fleet
    batch = [brief(heavy, f"batch {i}") for i in range(4)]
    trickle = [brief(light, f"trickle {i}") for i in range(2)]
    with running_worker(concurrency=1):  # one thread: it takes the broker's messages in their order
        done = [wait_for_job(job.pk) for job in batch + trickle]
    assert {job.state for job in done} == {"succeeded"}
    order = [job.prompt for job in sorted(done, key=lambda job: job.started_at)]
    if fair:  # the message of batch 0 (first in the broker) ran the light team's first brief, and so on
        assert order == ["trickle 0", "trickle 1", "batch 0", "batch 1", "batch 2", "batch 3"]
    else:
        assert order == ["batch 0", "batch 1", "batch 2", "batch 3", "trickle 0", "trickle 1"]
    assert all(job.attempts == 1 for job in done)  # nothing ran twice


@pytest.mark.django_db
def test_admission_counts_only_the_jobs_fair_share_serves_first(teams, one_slot, settings):
    heavy, light = teams
    used(heavy, 100.0)
    [brief(heavy, f"batch {i}") for i in range(5)]
    newcomer = brief(light, "trickle")
    assert "depth 0/50" in newcomer.admission_reason  # nothing of its class is served before it
    assert "depth 6/50" in brief(heavy, "batch 5").admission_reason  # its own 5, and the light team's one
    settings.FAIR_SHARE = False
    assert "depth 7/50" in brief(light, "fifo").admission_reason  # FIFO: every queued job is ahead


@pytest.mark.django_db
def test_a_heavier_weight_buys_a_larger_share(teams, one_slot):
    heavy, light = teams
    used(heavy, 4.0), used(light, 4.0)
    [brief(heavy, f"batch {i}") for i in range(5)]
    # Equal weights and usage: of the other team's jobs, only the first starts at or before a new brief's tag.
    assert "depth 1/50" in brief(light, "first").admission_reason
    Job.objects.filter(prompt="first").delete()
    TeamQuota.objects.create(team=heavy.member.team, weight=2)
    # Weight 2: its jobs' tags are (4 + k)/2 (k-th waiting, 1 s each), at or below the light team's 4 for k ≤ 4.
    assert "depth 5/50" in brief(light, "second").admission_reason


@pytest.mark.django_db
@pytest.mark.parametrize("fair", [True, False])
def test_deferred_work_is_released_in_fair_order(teams, demo_lanes, settings, fair):
    settings.FAIR_SHARE = fair
    Lane.objects.filter(name="fast-draft").update(max_concurrency=3, defer_depth=3, hard_cap=100)
    lane = Lane.objects.get(name="fast-draft")
    heavy, light = teams
    used(heavy, 100.0)
    blockers = [brief(heavy, f"blocker {i}") for i in range(3)]
    deferred = [brief(heavy, f"batch {i}", Priority.BACKGROUND) for i in range(4)]
    deferred += [brief(light, f"trickle {i}", Priority.BACKGROUND) for i in range(2)]
    assert {job.state for job in deferred} == {Job.State.DEFERRED}
    assert {job.deferral for job in deferred} == {Job.Deferral.PRESSURE}
    Job.objects.filter(pk__in=[job.pk for job in blockers]).update(state=Job.State.CANCELLED)
    released = [job.prompt for job in release_deferred(lane)]
    if fair:
        assert released == ["trickle 0", "trickle 1", "batch 0"]
    else:
        assert released == ["batch 0", "batch 1", "batch 2"]
