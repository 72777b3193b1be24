"""Webhook endpoints through the API: the same checks, secrets shown once, audit rows as the console."""

import pytest

from accounts.models import Team
from lanes.models import AuditEvent
from tests.conftest import make_user
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def allow_hooks(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ("127.0.0.1",)  # a receiver on this machine; nothing resolves names here


def test_ops_register_an_endpoint_and_see_its_secret_once(callers, users, allow_hooks):
    created = callers["ops"].post(
        "/webhooks", {"url": "http://127.0.0.1:9/in", "events": ["job.succeeded", "job.failed"]}
    )
    assert created.status_code == 201, created.content
    body = created.json()
    endpoint = Endpoint.objects.get(pk=body["id"])
    assert body["secret"] == endpoint.secret and body["secret"].startswith("whsec_")
    assert endpoint.team == users["ops"].member.team and endpoint.events == ["job.succeeded", "job.failed"]
    detail = callers["ops"].get(f"/webhooks/{endpoint.pk}").json()
    assert "secret" not in detail and detail["deliveries"] == []
    assert [e["id"] for e in callers["ops"].get("/webhooks").json()] == [endpoint.pk]
    rotated = callers["ops"].post(f"/webhooks/{endpoint.pk}/rotate").json()["secret"]
    endpoint.refresh_from_db()
    assert rotated == endpoint.secret != body["secret"]
    assert set(AuditEvent.objects.values_list("action", flat=True)) == {"webhook.create", "webhook.rotate-secret"}


def test_private_addresses_unknown_events_and_bad_urls_are_refused(callers):
    for url in ("http://127.0.0.1:9/in", "http://169.254.169.254/latest", "http://[::1]/x", "ftp://example.com/x"):
        refused = callers["ops"].post("/webhooks", {"url": url, "events": ["job.failed"]})
        assert refused.status_code == 422, (url, refused.content)
        assert refused["Content-Type"] == "application/problem+json"
    assert (
        callers["ops"].post("/webhooks", {"url": "https://a.example/", "events": ["job.exploded"]}).status_code == 422
    )
    assert callers["ops"].post("/webhooks", {"url": "https://a.example/", "events": []}).status_code == 422
    assert not Endpoint.objects.exists()


def test_another_teams_endpoint_does_not_exist_and_only_admins_pick_a_team(callers, users, allow_hooks):
    agency = Team.objects.create(name="agency")
    theirs = Endpoint.objects.create(team=agency, url="https://hooks.example.com/a", events=["job.failed"])
    assert callers["ops"].get(f"/webhooks/{theirs.pk}").status_code == 404
    assert callers["ops"].post(f"/webhooks/{theirs.pk}/rotate").status_code == 404
    assert callers["ops"].send("DELETE", f"/webhooks/{theirs.pk}").status_code == 404
    assert callers["ops"].get("/webhooks").json() == []
    other_team = {"url": "http://127.0.0.1:9/b", "events": ["job.failed"], "team": "agency"}
    assert callers["ops"].post("/webhooks", other_team).status_code == 403
    made = callers["admin"].post("/webhooks", other_team)
    assert made.status_code == 201 and made.json()["team"] == "agency"
    assert {e["team"] for e in callers["admin"].get("/webhooks").json()} == {"agency"}
    assert callers["creative"].get("/webhooks").status_code == 403
    loner = make_user("solo", "ops")
    from accounts.models import ApiToken

    _, secret = ApiToken.issue(loner, "t")
    response = callers["ops"].client.post(
        "/api/v1/webhooks", {"url": "http://127.0.0.1:9/c", "events": ["job.failed"]},
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}",
    )  # fmt: skip
    assert response.status_code == 422 and "no team" in response.json()["detail"]


def test_disable_redeliver_and_delete(callers, users, allow_hooks):
    endpoint = Endpoint.objects.create(
        team=users["ops"].member.team, url="http://127.0.0.1:9/in", events=["job.failed"]
    )
    delivery = Delivery.objects.create(
        endpoint=endpoint, event="job.failed", payload={}, max_attempts=1, state="failed"
    )
    off = callers["ops"].post(f"/webhooks/{endpoint.pk}/enabled", {"enabled": False})
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert callers["ops"].post(f"/webhooks/deliveries/{delivery.pk}/redeliver").status_code == 409
    callers["ops"].post(f"/webhooks/{endpoint.pk}/enabled", {"enabled": True})
    again = callers["ops"].post(f"/webhooks/deliveries/{delivery.pk}/redeliver")
    assert again.status_code == 202 and again.json()["msg_id"] == delivery.msg_id
    assert callers["ops"].post(f"/webhooks/{endpoint.pk}/enabled", {"enabled": "no"}).status_code == 422
    assert callers["ops"].send("DELETE", f"/webhooks/{endpoint.pk}").status_code == 204
    assert not Endpoint.objects.exists()
    assert AuditEvent.objects.filter(action="webhook.delete").count() == 1
