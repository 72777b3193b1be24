from datetime import timedelta

import pytest
from django.utils import timezone

from lanes.models import Job, Worker
from lanes.tasks import reconcile_jobs
from tests.conftest import wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(owner, lane, **fields) -> Job:
    return Job.objects.create(
        owner=owner,
        prompt="Recovered",
        intent="draft",
        lane=lane,
        model_version=lane.active_version,
        seed=5,
        width=64,
        height=64,
        steps=2,
        guidance=7.5,
        **fields,
    )


def test_a_job_running_on_a_lost_worker_is_requeued_and_finishes_once(worker, creative, demo_lanes):
    lane = demo_lanes.lanes.get(name="fast-draft")
    long_ago = timezone.now() - timedelta(minutes=5)
    Worker.objects.create(ident="gone-host:99", hostname="gone-host", pid=99, last_seen=long_ago)
    job = make_job(creative, lane, state=Job.State.RUNNING, worker="gone-host:99", started_at=long_ago, attempts=1)

    assert reconcile_jobs() == {"requeued": 1, "failed": 0, "redispatched": 0, "revalidated": 0}
    job = wait_for_job(job.pk)
    assert job.state == Job.State.SUCCEEDED
    assert job.attempts == 2 and job.worker != "gone-host:99"
    assert job.artifacts.count() == 1
    assert Worker.objects.get(ident="gone-host:99").stopped_at is not None
    # Running it again changes nothing.
    assert reconcile_jobs() == {"requeued": 0, "failed": 0, "redispatched": 0, "revalidated": 0}


def test_a_job_on_a_live_worker_is_left_alone(worker, creative, demo_lanes):
    from lanes.heartbeat import worker_ident

    lane = demo_lanes.lanes.get(name="fast-draft")
    job = make_job(
        creative,
        lane,
        state=Job.State.RUNNING,
        worker=worker_ident(),
        started_at=timezone.now() - timedelta(minutes=5),
        attempts=1,
    )
    assert reconcile_jobs()["requeued"] == 0
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING


def test_a_job_lost_too_often_fails_with_the_reason(creative, demo_lanes, settings):
    lane = demo_lanes.lanes.get(name="fast-draft")
    job = make_job(
        creative,
        lane,
        state=Job.State.RUNNING,
        worker="gone-host:7",
        started_at=timezone.now() - timedelta(minutes=5),
        attempts=settings.JOB_MAX_WORKER_LOSSES,
        lost_workers=settings.JOB_MAX_WORKER_LOSSES - 1,
    )
    assert reconcile_jobs()["failed"] == 1
    job.refresh_from_db()
    assert job.state == Job.State.FAILED and "gone-host:7 was lost" in job.error
    assert job.lost_workers == settings.JOB_MAX_WORKER_LOSSES


def test_lost_workers_are_counted_apart_from_attempts_and_allowed_more_often(creative, demo_lanes, settings):
    lane = demo_lanes.lanes.get(name="fast-draft")
    job = make_job(
        creative, lane, state=Job.State.RUNNING, worker="gone-host:8",
        started_at=timezone.now() - timedelta(minutes=5), attempts=3, lost_workers=2,
    )  # fmt: skip
    assert settings.JOB_MAX_WORKER_LOSSES > 3
    assert reconcile_jobs()["requeued"] == 1
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.lost_workers == 3 and job.attempts == 3


def test_a_queued_job_whose_message_was_lost_is_sent_again(worker, creative, demo_lanes, settings):
    lane = demo_lanes.lanes.get(name="fast-draft")
    stale = timezone.now() - timedelta(seconds=settings.REDISPATCH_AFTER_SECONDS + 5)
    # Never sent to the broker (as if the broker restarted and dropped it).
    job = make_job(creative, lane, submitted_at=stale, dispatched_at=stale)
    fresh = make_job(creative, lane)  # not stuck yet: left alone
    assert reconcile_jobs()["redispatched"] == 1
    job = wait_for_job(job.pk)
    assert job.state == Job.State.SUCCEEDED and job.attempts == 1
    fresh.refresh_from_db()
    assert fresh.state == Job.State.QUEUED
