"""The worker heartbeat: liveness rows, and a worker serving every lane following lanes created after it started."""

import pytest
from django.conf import settings

from lanes import policy
from lanes.actions import submit_brief
from lanes.heartbeat import heartbeat
from lanes.models import Job, Lane, Worker
from tests.conftest import running_worker, wait_for_job, wait_until

NEW_LANE = """\
- name: late-lane
  model: demo-tiny-sd-v1
  sample_steps: 2
  width: 64
  height: 64
  min_size: 32
"""


def with_new_lane(text: str) -> str:
    """The policy as it is, plus one lane and an intent routed to it."""
    head, intents = text.split("intents:\n", 1)
    return f"{head}{NEW_LANE}intents:\n  late: {{lane: late-lane, priority: standard, label: Late}}\n{intents}"


@pytest.fixture
def following():
    heartbeat.follow_lanes = True
    yield heartbeat
    heartbeat.follow_lanes = False


@pytest.mark.django_db(transaction=True)
def test_a_worker_serving_every_lane_consumes_a_lane_created_after_it_started(demo_lanes, creative, following):
    settings.ADMISSION_CONTROL = False
    with running_worker(queues=[settings.CELERY_TASK_DEFAULT_QUEUE]):
        worker = Worker.objects.get(stopped_at__isnull=True)
        assert following.follow() == []  # the lanes there were at start are no news
        policy.apply(with_new_lane(policy.export()))
        queue = Lane.objects.get(name="late-lane").queue
        assert queue not in heartbeat.live_queues()
        job = submit_brief(creative, prompt="a lane nobody served at start", intent="late")
        assert job.lane.name == "late-lane" and Job.objects.get(pk=job.pk).state == Job.State.QUEUED
        assert job.waiting_note() == "no worker consumes lane late-lane"

        # One heartbeat later: this one, or the worker's own heartbeat thread if it beat first.
        assert following.follow() in ([queue], [])
        wait_until(lambda: queue in heartbeat.live_queues(), what=f"{queue} consumed without a restart")
        assert wait_for_job(job.pk).state == Job.State.SUCCEEDED
        following.beat()
        assert queue in Worker.objects.get(pk=worker.pk).queue_list
        assert following.follow() == []  # nothing left to add


@pytest.mark.django_db(transaction=True)
def test_a_lane_ops_stopped_consuming_is_not_added_back(demo_lanes, following):
    from lanes import control
    from tests.conftest import make_user

    with running_worker():
        worker = Worker.objects.get(stopped_at__isnull=True)
        control.set_consuming(worker, Lane.objects.get(name="preview"), False, make_user("olive", "ops"))
        assert following.follow() == []
        following.beat()
        assert "lane.preview" not in Worker.objects.get(pk=worker.pk).queue_list


@pytest.mark.django_db(transaction=True)
def test_a_worker_started_for_some_lanes_does_not_pick_up_new_ones(demo_lanes):
    assert not heartbeat.follow_lanes
    with running_worker(queues=[settings.CELERY_TASK_DEFAULT_QUEUE]):
        policy.apply(with_new_lane(policy.export()))
        assert heartbeat.follow() == []
        heartbeat.beat()
        assert "lane.late-lane" not in Worker.objects.get(stopped_at__isnull=True).queue_list
