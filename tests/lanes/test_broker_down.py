"""Submitting while the broker is unreachable: the brief is saved, the caller is told so (503), never a
500; reconcile sends the job once the broker is back. The outage is real: the producer is pointed at
a port where nothing listens."""

from contextlib import contextmanager

import pytest
from django.utils import timezone

from console.celery import app
from lanes import dispatch as dispatching
from lanes.actions import submit_brief
from lanes.models import Job
from tests.conftest import make_user, waiting_tasks

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def unreachable_broker():
    """Producers (not the test's consumers) write to a port where no broker listens."""

    def use(url):
        app.conf.broker_write_url = url
        app._pool, app.amqp._producer_pool = None, None  # kombu keeps a pool per URL: the next send picks anew

    use("redis://127.0.0.1:1/0")
    try:
        yield
    finally:
        use(None)


@pytest.fixture
def broker_down():
    with unreachable_broker():
        yield


def test_a_brief_submitted_while_the_broker_is_down_is_saved_and_sent_by_reconcile(demo_lanes, broker_down):
    job = submit_brief(make_user("casey"), prompt="a poster", intent="draft")
    assert job.queueing_down
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.dispatched_at is None


def test_the_api_and_the_form_answer_503_saying_the_brief_is_saved(demo_lanes, client, broker_down):
    from accounts.models import ApiToken

    user = make_user("casey")
    _, secret = ApiToken.issue(user, "t")
    key = {"HTTP_AUTHORIZATION": f"Bearer {secret}", "HTTP_IDEMPOTENCY_KEY": "once"}
    brief = {"prompt": "a poster", "intent": "draft"}
    answer = client.post("/api/v1/jobs", brief, content_type="application/json", **key)
    assert answer.status_code == 503 and answer["Retry-After"] == "30"
    job = Job.objects.get()
    assert f"saved as job {job.pk}" in answer.json()["detail"]
    again = client.post("/api/v1/jobs", brief, content_type="application/json", **key)
    assert again.status_code == 503 and Job.objects.count() == 1  # a retry finds the saved job
    client.force_login(user)
    page = client.post("/briefs/new/", {"prompt": "another", "intent": "draft"})
    assert page.status_code == 503 and "Queueing is down" in page.text and Job.objects.count() == 2


def test_reconcile_sends_what_the_outage_left_once_the_broker_is_back(demo_lanes, settings):
    with unreachable_broker():
        job = submit_brief(make_user("casey"), prompt="a poster", intent="draft")
    assert job.queueing_down
    settings.REDISPATCH_AFTER_SECONDS = 0
    Job.objects.filter(pk=job.pk).update(submitted_at=timezone.now() - timezone.timedelta(seconds=1))
    dispatching.reconcile()
    job.refresh_from_db()
    assert job.dispatched_at is not None
    assert ("lanes.tasks.run_job", (job.pk,)) in waiting_tasks(job.lane.queue)


def test_the_dashboard_says_when_the_broker_is_unreachable(demo_lanes, client):
    client.force_login(make_user("olive", "ops"))
    assert 'id="broker-down"' not in client.get("/dashboard/").text
    with unreachable_broker():
        page = client.get("/dashboard/")
    assert page.status_code == 200 and 'id="broker-down"' in page.text and "Broker unreachable" in page.text
