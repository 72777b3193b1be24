"""The delivery task (webhooks.tasks.deliver) on a real Celery worker, against a local receiver."""

import json
import socket
import threading
import time as clock
from datetime import timedelta

import pytest
import standardwebhooks
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tests.conftest import running_worker, wait_until
from tests.webhooks.test_outbox import purge
from webhooks import delivery as deliveries
from webhooks import outbox
from webhooks.delivery import USER_AGENT, claim, send_due
from webhooks.models import Attempt, Delivery, Endpoint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def webhook_worker(transactional_db, local_receivers):
    purge(settings.WEBHOOK_QUEUE)
    with running_worker(queues=[settings.WEBHOOK_QUEUE]) as controller:
        yield controller


def subscribe(team, receiver, events=("job.succeeded",)) -> Endpoint:
    return Endpoint.objects.create(team=team, url=receiver.url, events=list(events))


def emit(team, data=None) -> Delivery:
    with transaction.atomic():
        outbox.emit("job.succeeded", data or {"id": 42}, team.pk)
    return Delivery.objects.latest("id")


def finished(delivery: Delivery, timeout: float = 15.0) -> Delivery:
    def done():
        delivery.refresh_from_db()
        return delivery if delivery.state != Delivery.State.PENDING else None

    return wait_until(done, timeout, lambda: f"delivery still pending after {delivery.attempts} attempts")


def test_a_delivery_is_signed_as_standard_webhooks_says(webhook_worker, receiver, team):
    endpoint = subscribe(team, receiver)
    delivery = finished(emit(team, {"id": 42, "state": "succeeded"}))

    assert delivery.state == Delivery.State.SUCCEEDED and delivery.attempts == 1
    assert delivery.last_status_code == 200 and delivery.delivered_at and delivery.last_duration_ms is not None
    [got] = receiver.received
    assert got.path == "/hooks" and got.headers["webhook-id"] == delivery.msg_id
    assert got.headers["content-type"] == "application/json" and got.headers["user-agent"] == USER_AGENT
    # The spec's own implementation verifies it with the endpoint's secret...
    payload = standardwebhooks.Webhook(endpoint.secret).verify(got.body, got.headers)
    assert payload == {
        "type": "job.succeeded",
        "timestamp": delivery.payload["timestamp"],
        "data": {"id": 42, "state": "succeeded"},
    }
    # ...and refuses a tampered body, or another endpoint's secret.
    tampered = got.body.replace(b'"id":42', b'"id":43')
    assert tampered != got.body
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(endpoint.secret).verify(tampered, got.headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(Endpoint(team=team).secret).verify(got.body, got.headers)
    assert Attempt.objects.get(delivery=delivery).status_code == 200


def test_a_receiver_that_fails_twice_then_recovers_gets_the_third_attempt_on_schedule(
    webhook_worker, receiver, team, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE = (0.3, 0.6, 5.0)
    receiver.script = [500, 503]
    endpoint = subscribe(team, receiver)
    delivery = finished(emit(team))

    assert delivery.state == Delivery.State.SUCCEEDED and delivery.attempts == 3
    attempts = list(Attempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.number, a.status_code, a.succeeded) for a in attempts] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert attempts[0].error == "receiver said 500"
    gaps = [(later.at - earlier.at).total_seconds() for earlier, later in zip(attempts, attempts[1:], strict=False)]
    assert 0.3 <= gaps[0] < 3 and 0.6 <= gaps[1] < 3.3, gaps
    # The same message each time (receivers deduplicate on webhook-id), each signed afresh.
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1 and len(receiver.received) == 3
    for got in receiver.received:
        standardwebhooks.Webhook(endpoint.secret).verify(got.body, got.headers)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is None  # the success cleared the failures


def test_a_delivery_fails_after_the_last_retry(webhook_worker, receiver, team, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = (0.1, 0.2)
    receiver.then = 500
    endpoint = subscribe(team, receiver)
    delivery = finished(emit(team))

    assert delivery.state == Delivery.State.FAILED and delivery.attempts == 3 and delivery.next_attempt_at is None
    assert delivery.last_status_code == 500 and delivery.last_error == "receiver said 500"
    assert Attempt.objects.filter(delivery=delivery).count() == len(receiver.received) == 3
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is not None  # failing, not yet for a day
    assert send_due(timezone.now() + timedelta(days=1)) == 0


def test_a_delivery_whose_worker_died_mid_attempt_is_sent_once_more_when_its_lease_runs_out(
    local_receivers, receiver, team, settings
):
    # The lease: about three timeouts and a second (4 s). Much shorter, and an attempt slowed by a loaded machine
    # could outlive its own lease and be claimed a third time (seen once in CI: attempts 3).
    settings.WEBHOOK_TIMEOUT_SECONDS = 1.0
    subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team)
    purge(settings.WEBHOOK_QUEUE)  # a worker took the message...
    assert claim(delivery, timezone.now())  # ...claimed the attempt, and was killed before sending it
    assert send_due() == 0  # leased: not due yet

    with running_worker(queues=[settings.WEBHOOK_QUEUE]):
        wait_until(lambda: send_due(), timeout=15, what="the lease running out")  # beat finds it due again
        delivery = finished(delivery)
        assert send_due() == 0

    assert delivery.state == Delivery.State.SUCCEEDED and delivery.attempts == 2
    assert len(receiver.received) == 1
    assert list(Attempt.objects.filter(delivery=delivery).values_list("number", flat=True)) == [2]


def test_a_delivery_whose_message_was_lost_is_sent_again_by_beat(local_receivers, receiver, team, settings):
    subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team)
    purge(settings.WEBHOOK_QUEUE)  # the broker lost the message before any worker took it
    assert send_due() == 0  # its message may still be on its way
    later = timezone.now() + timedelta(seconds=settings.REDISPATCH_AFTER_SECONDS + 1)
    with running_worker(queues=[settings.WEBHOOK_QUEUE]):
        assert send_due(later) == 1
        delivery = finished(delivery)
    assert delivery.state == Delivery.State.SUCCEEDED and len(receiver.received) == 1


def test_two_workers_never_send_the_same_attempt(local_receivers, receiver, team):
    subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team)
    purge(settings.WEBHOOK_QUEUE)
    assert deliveries.deliver(delivery.pk) == Delivery.State.SUCCEEDED
    assert deliveries.deliver(delivery.pk) == "skipped: succeeded"
    stale = Delivery.objects.get(pk=delivery.pk)
    stale.state, stale.attempts = Delivery.State.PENDING, 0  # a second worker read it before the first claimed
    assert not claim(stale, timezone.now())
    assert len(receiver.received) == 1


def test_an_endpoint_failing_every_delivery_past_the_window_is_disabled(local_receivers, receiver, team):
    receiver.then = 500
    endpoint = subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    first, waiting = emit(team), emit(team)
    purge(settings.WEBHOOK_QUEUE)
    assert deliveries.deliver(first.pk) == Delivery.State.PENDING
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is not None

    Endpoint.objects.filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS + 1)
    )
    Delivery.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    assert deliveries.deliver(first.pk) == Delivery.State.PENDING  # written before the endpoint was disabled
    endpoint.refresh_from_db()
    assert not endpoint.enabled and endpoint.disabled_reason.startswith("Disabled automatically")
    # What was waiting will not be tried; a new event is not written for it.
    assert set(Delivery.objects.values_list("state", flat=True)) == {Delivery.State.FAILED}
    waiting.refresh_from_db()
    assert waiting.last_error == "the endpoint was disabled"
    assert outbox.emit("job.succeeded", {}, team.pk) == 0


def test_a_redirect_is_not_followed(local_receivers, receiver, team):
    receiver.script = [302]
    receiver.redirect_to = receiver.url + "/moved"
    subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team)
    purge(settings.WEBHOOK_QUEUE)
    assert deliveries.deliver(delivery.pk) == Delivery.State.PENDING
    delivery.refresh_from_db()
    assert delivery.last_status_code == 302 and "redirects are not followed" in delivery.last_error
    assert [r.path for r in receiver.received] == ["/hooks"]


def test_a_private_address_is_refused_at_send_time_too(local_receivers, receiver, team, settings):
    subscribe(team, receiver)  # registered while the allow-list named it
    settings.WEBHOOK_ALLOWED_HOSTS = ()
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team)
    purge(settings.WEBHOOK_QUEUE)
    assert deliveries.deliver(delivery.pk) == Delivery.State.PENDING
    delivery.refresh_from_db()
    assert delivery.last_status_code is None and "not a public address (loopback)" in delivery.last_error
    assert receiver.received == []


def test_the_payload_body_is_the_json_the_signature_covers(local_receivers, receiver, team):
    subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team, {"text": "Grand opening — ünïcode"})
    purge(settings.WEBHOOK_QUEUE)
    deliveries.deliver(delivery.pk)
    [got] = receiver.received
    assert json.loads(got.body)["data"] == {"text": "Grand opening — ünïcode"}
    assert got.headers["host"] == receiver.url.split("/")[2]


def test_a_receiver_that_drips_its_answer_cannot_hold_the_attempt_past_the_timeout(local_receivers, team, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 1.0
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def drip():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 500 Slow\r\nX-Drip: ")
        while not stop.wait(0.2):  # a byte every 0.2 s: each read succeeds, the whole never ends
            try:
                conn.sendall(b"a")
            except OSError:
                break
        conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    endpoint = Endpoint.objects.create(
        team=team, url=f"http://127.0.0.1:{server.getsockname()[1]}/hooks", events=["job.succeeded"]
    )
    delivery = Delivery.objects.create(endpoint=endpoint, event="job.succeeded", payload={}, max_attempts=1)
    started = clock.monotonic()
    status, error = deliveries.post(delivery)
    took = clock.monotonic() - started
    stop.set()
    server.close()
    assert status is None and "no answer within 1 s" in error
    assert took < 2.5, took


def test_one_failure_after_a_quiet_day_starts_a_new_streak_instead_of_disabling(local_receivers, receiver, team):
    receiver.then = 500
    endpoint = subscribe(team, receiver)
    purge(settings.WEBHOOK_QUEUE)
    delivery = emit(team)
    purge(settings.WEBHOOK_QUEUE)
    long_ago = timezone.now() - timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS + 1)
    # One failure a day ago, and nothing since: that streak is over.
    Endpoint.objects.filter(pk=endpoint.pk).update(failing_since=long_ago, last_failure_at=long_ago)
    assert deliveries.deliver(delivery.pk) == Delivery.State.PENDING
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since > long_ago + timedelta(hours=23)
