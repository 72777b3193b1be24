"""The outbox: deliveries are written with the event, in its transaction, and sent only after it commits."""

import pytest
from django.conf import settings
from django.db import transaction

from accounts.models import Team
from console.celery import app
from tests.conftest import waiting_tasks
from webhooks import outbox
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db


def endpoint(team, events, url="https://hooks.example.com/laneway", **fields):
    return Endpoint.objects.create(team=team, url=url, events=events, **fields)


def purge(queue: str) -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)


def test_an_event_is_written_once_for_each_endpoint_of_the_team_that_wants_it(team):
    other = Team.objects.create(name="agency")
    wants = endpoint(team, ["job.succeeded", "job.failed"])
    endpoint(team, ["job.failed"])
    endpoint(team, ["job.succeeded"], enabled=False)
    endpoint(other, ["job.succeeded"])

    assert outbox.emit("job.succeeded", {"id": 7}, team.pk) == 1

    delivery = Delivery.objects.get()
    assert delivery.endpoint == wants and delivery.event == "job.succeeded"
    assert delivery.state == Delivery.State.PENDING and delivery.attempts == 0
    assert delivery.max_attempts == 1 + len(settings.WEBHOOK_RETRY_SCHEDULE)
    assert delivery.msg_id.startswith("msg_")
    assert delivery.payload["type"] == "job.succeeded" and delivery.payload["data"] == {"id": 7}
    assert delivery.payload["timestamp"]


def test_a_fleet_wide_event_goes_to_every_teams_endpoints_that_want_it(team):
    other = Team.objects.create(name="agency")
    endpoint(team, ["lane.changed"])
    endpoint(other, ["lane.changed"])
    endpoint(other, ["job.failed"])
    assert outbox.emit_fleet("lane.changed", {"lane": "fast-draft"}) == 2
    assert set(Delivery.objects.values_list("endpoint__team__name", flat=True)) == {"studio", "agency"}


def test_a_teamless_jobs_event_goes_to_no_teams_endpoints(team):
    other = Team.objects.create(name="agency")
    endpoint(team, ["job.failed"])
    endpoint(other, ["job.failed"])
    assert outbox.emit("job.failed", {"id": 1, "error": "boom"}, None) == 0
    assert not Delivery.objects.exists()
    with pytest.raises(ValueError):
        outbox.emit("lane.changed", {}, team.pk)  # fleet events go through emit_fleet
    with pytest.raises(ValueError):
        outbox.emit_fleet("job.failed", {})


def test_an_unknown_event_is_a_programming_error(team):
    with pytest.raises(ValueError, match="job.exploded"):
        outbox.emit("job.exploded", {}, team.pk)


def test_an_event_whose_transaction_rolls_back_leaves_no_delivery(team):
    endpoint(team, ["job.succeeded"])
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            outbox.emit("job.succeeded", {"id": 1}, team.pk)
            assert Delivery.objects.count() == 1
            raise RuntimeError("the change failed")
    assert Delivery.objects.count() == 0


def test_the_delivery_task_is_sent_by_name_to_the_webhook_queue_only_after_commit(
    team, django_capture_on_commit_callbacks
):
    endpoint(team, ["job.succeeded"])
    purge(settings.WEBHOOK_QUEUE)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            outbox.emit("job.succeeded", {"id": 1}, team.pk)
            assert waiting_tasks(settings.WEBHOOK_QUEUE) == []
    assert len(callbacks) == 1
    assert waiting_tasks(settings.WEBHOOK_QUEUE) == [("webhooks.tasks.deliver", (Delivery.objects.get().pk,))]
    purge(settings.WEBHOOK_QUEUE)
