"""The webhook pages: register (secret shown once), rotate, enable/disable, delete, the delivery log, redeliver."""

import pytest
import standardwebhooks
from django.conf import settings
from django.urls import reverse

from accounts.models import Team
from lanes.models import AuditEvent
from tests.conftest import make_user, running_worker, wait_until
from tests.webhooks.test_outbox import purge
from webhooks.models import Attempt, Delivery, Endpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def studio(db):
    return Team.objects.create(name="studio")


@pytest.fixture
def ops(client, studio):
    client.force_login(make_user("olive", "ops", studio))
    return client


def endpoint(team, url="https://93.184.216.34/in", **fields):
    return Endpoint.objects.create(team=team, url=url, events=["job.succeeded"], **fields)


def test_registering_an_endpoint_shows_its_secret_once(ops, receiver, studio):
    page = ops.post(
        reverse("webhook-new"),
        {"url": receiver.url, "events": ["job.succeeded", "lane.changed"], "description": "CMS"},
    )
    assert page.status_code == 201
    created = Endpoint.objects.get()
    assert (created.team, created.url, created.events) == (studio, receiver.url, ["job.succeeded", "lane.changed"])
    assert created.secret.startswith("whsec_") and created.secret in page.text
    assert created.created_by.username == "olive"
    endpoint_id = Endpoint.objects.get().pk
    assert AuditEvent.objects.get(action="webhook.create").target == f"studio: webhook {endpoint_id} (127.0.0.1)"
    assert created.secret not in ops.get(reverse("webhook-detail", args=[created.pk])).text
    assert created.secret not in ops.get(reverse("webhook-list")).text


@pytest.mark.parametrize(
    "url,events,message",
    [
        ("http://127.0.0.1:9/hooks", ["job.succeeded"], "is not a public address (loopback)"),
        ("http://169.254.169.254/latest/meta-data/", ["job.succeeded"], "is not a public address (link-local)"),
        ("ftp://hooks.example.com/", ["job.succeeded"], "Only http:// and https://"),
        ("https://hooks.example.com/", ["job.exploded"], "Select a valid choice"),
        ("https://hooks.example.com/", [], "This field is required"),
    ],
)
def test_a_refused_registration_says_why_beside_the_field_and_stores_nothing(ops, settings, url, events, message):
    settings.WEBHOOK_ALLOWED_HOSTS = ()
    page = ops.post(reverse("webhook-new"), {"url": url, "events": events})
    assert page.status_code == 400 and message in page.content.decode().replace("&#x27;", "'")
    assert not Endpoint.objects.exists()


def test_ops_manage_their_own_teams_endpoints_and_admins_every_teams(client, ops, studio):
    ours, theirs = endpoint(studio), endpoint(Team.objects.create(name="agency"), url="https://93.184.216.34/agency")
    listing = ops.get(reverse("webhook-list")).text
    assert ours.url in listing and theirs.url not in listing
    assert ops.get(reverse("webhook-detail", args=[theirs.pk])).status_code == 404
    assert ops.post(reverse("webhook-delete", args=[theirs.pk])).status_code == 404
    client.force_login(make_user("ada", "admin"))
    listing = client.get(reverse("webhook-list")).text
    assert ours.url in listing and theirs.url in listing
    # An admin registers for any team.
    page = client.post(
        reverse("webhook-new"),
        {"team": theirs.team.pk, "url": "https://93.184.216.34/agency/2", "events": ["job.failed"]},
    )
    assert page.status_code == 201 and Endpoint.objects.filter(team=theirs.team).count() == 2


def test_rotating_the_secret_shows_the_new_one_once(ops, studio):
    hook = endpoint(studio)
    old = hook.secret
    page = ops.post(reverse("webhook-rotate", args=[hook.pk]))
    hook.refresh_from_db()
    assert page.status_code == 200 and hook.secret != old and hook.secret in page.text and old not in page.text
    assert AuditEvent.objects.filter(action="webhook.rotate-secret").exists()


def test_disabling_and_enabling_an_endpoint(ops, studio):
    hook = endpoint(studio, failing_since="2026-01-01T00:00Z")
    assert ops.post(reverse("webhook-enabled", args=[hook.pk])).status_code == 302
    hook.refresh_from_db()
    assert not hook.enabled and hook.disabled_reason == ""
    ops.post(reverse("webhook-enabled", args=[hook.pk]), {"enabled": "on"})
    hook.refresh_from_db()
    assert hook.enabled and hook.failing_since is None
    assert [e.action for e in AuditEvent.objects.order_by("id")] == ["webhook.disable", "webhook.enable"]


def test_deleting_an_endpoint_removes_its_log(ops, studio):
    hook = endpoint(studio)
    Delivery.objects.create(endpoint=hook, event="job.succeeded", payload={}, max_attempts=1)
    assert ops.post(reverse("webhook-delete", args=[hook.pk])).status_code == 302
    assert not Endpoint.objects.exists() and not Delivery.objects.exists()


def test_the_delivery_log_pages_with_few_queries(ops, studio, django_assert_max_num_queries):
    hook = endpoint(studio)
    for n in range(30):
        delivery = Delivery.objects.create(endpoint=hook, event="job.succeeded", payload={}, max_attempts=3, attempts=1)
        Attempt.objects.create(delivery=delivery, number=1, status_code=500 + n % 3, error="boom", duration_ms=12)
    with django_assert_max_num_queries(12):
        page = ops.get(reverse("webhook-detail", args=[hook.pk]))
    assert page.text.count('class="delivery-pending"') == 25 and "older →" in page.text
    assert "502" in page.text and "12 ms" in page.text
    assert ops.get(reverse("webhook-detail", args=[hook.pk]) + "?page=2").text.count('class="delivery-pending"') == 5
    with django_assert_max_num_queries(8):
        ops.get(reverse("webhook-list"))


def test_an_endpoint_disabled_by_laneway_puts_a_banner_before_its_teams_ops(ops, client, studio):
    hook = endpoint(studio, enabled=False, disabled_reason="Disabled automatically: every delivery failed since …")
    page = ops.get(reverse("job-list"))
    assert "Webhook disabled:" in page.text and hook.url in page.text
    client.force_login(make_user("otto", "ops", Team.objects.create(name="agency")))
    assert "Webhook disabled:" not in client.get(reverse("job-list")).text
    client.force_login(make_user("casey", "creative", studio))
    assert "Webhook disabled:" not in client.get(reverse("job-list")).text
    Endpoint.objects.filter(pk=hook.pk).update(disabled_reason="")  # disabled by a person: no banner
    assert "Webhook disabled:" not in ops.get(reverse("job-list")).text


@pytest.mark.django_db(transaction=True)
def test_redeliver_sends_a_new_attempt_of_the_same_message(ops, receiver, studio):
    hook = endpoint(studio, url=receiver.url)
    delivery = Delivery.objects.create(
        endpoint=hook, event="job.succeeded", payload={"type": "job.succeeded"}, max_attempts=1
    )
    purge(settings.WEBHOOK_QUEUE)
    with running_worker(queues=[settings.WEBHOOK_QUEUE]):
        for expected in (1, 2):
            assert ops.post(reverse("webhook-redeliver", args=[delivery.pk])).status_code == 302
            wait_until(lambda n=expected: Attempt.objects.filter(delivery=delivery, succeeded=True).count() == n)
    delivery.refresh_from_db()
    assert delivery.state == Delivery.State.SUCCEEDED and delivery.attempts == 2
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery.msg_id] * 2
    for got in receiver.received:
        standardwebhooks.Webhook(hook.secret).verify(got.body, got.headers)
    assert AuditEvent.objects.filter(action="webhook.redeliver").count() == 2
    page = ops.get(reverse("webhook-detail", args=[hook.pk])).text
    assert page.count("200 ·") == 2


def test_redeliver_to_a_disabled_endpoint_is_refused(ops, studio):
    hook = endpoint(studio, enabled=False)
    delivery = Delivery.objects.create(endpoint=hook, event="job.succeeded", payload={}, max_attempts=1, state="failed")
    page = ops.post(reverse("webhook-redeliver", args=[delivery.pk]))
    assert page.status_code == 409 and "enable it first" in page.text
    delivery.refresh_from_db()
    assert delivery.state == Delivery.State.FAILED
