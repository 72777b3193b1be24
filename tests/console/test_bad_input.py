"""Bad input that used to reach the database or a library raw, and answered 500: now a 4xx."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from console.asgi import application
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/review/?lane=%00", "/review/?version=a%00b", "/audit/?lane=%00", "/jobs/?state=%00"])
def test_a_nul_in_a_query_parameter_is_a_400(client, url):
    client.force_login(make_user("olive", "ops"))
    response = client.get(url)
    assert response.status_code == 400 and "NUL" in response.text


def test_a_nul_in_a_form_field_or_an_api_query_is_a_400(client):
    client.force_login(make_user("olive", "ops"))
    assert client.post("/review/bulk/", {"action": "approve", "ids": "1\x00"}).status_code == 400
    api = client.get("/api/v1/jobs?lane=%00")
    assert api.status_code == 400 and api["Content-Type"] == "application/problem+json"


def test_bulk_review_ignores_ids_that_are_not_plain_digits(client):
    client.force_login(make_user("casey"))
    response = client.post("/review/bulk/", {"action": "approve", "ids": ["²", "9" * 40]})
    assert response.status_code == 302


def test_a_metrics_token_with_non_ascii_characters_is_refused_not_a_crash(client, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer \xe9t\xe9").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


@pytest.mark.parametrize("path", ["/ws/jobs/1/", "/ws/nothing/", "/"])
def test_a_websocket_to_an_unknown_path_is_refused(path):
    async def scenario():
        communicator = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://localhost")])
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


def test_signed_in_pages_keep_working_while_the_session_cache_is_down(client, settings):
    # A real outage: the session cache points at a port where no Redis listens.
    settings.CACHES = {**settings.CACHES, "down": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                                   "LOCATION": "redis://127.0.0.1:1/0"}}  # fmt: skip
    settings.SESSION_CACHE_ALIAS = "down"
    client.force_login(make_user("casey"))
    assert client.get("/jobs/").status_code == 200
    assert client.get("/account/tokens/").status_code == 200
    client.logout()
    assert client.get("/jobs/").status_code == 302


def test_fifty_wrong_passwords_lock_the_login_out_and_the_lockout_is_audited(client, settings):
    from lanes.models import AuditEvent

    make_user("casey")
    for _ in range(50):
        response = client.post("/login/", {"username": "casey", "password": "wrong"})
    assert response.status_code in (403, 429)
    right = client.post("/login/", {"username": "casey", "password": "casey-password-1"})
    assert right.status_code in (403, 429) and "_auth_user_id" not in client.session  # still locked out
    assert AuditEvent.objects.filter(action="login.locked-out", target__startswith="casey").count() == 1
    other = client.post("/login/", {"username": "olive", "password": "x"})  # another user is not locked out
    assert other.status_code == 200


def test_a_next_that_is_not_a_path_on_this_site_falls_back_to_the_page(client, demo_lanes):
    client.force_login(make_user("olive", "ops"))
    for target in ("draft", "https://elsewhere.example/", "//elsewhere.example/x", "lane-detail"):
        response = client.post("/lanes/fast-draft/notice/dismiss/", {"next": target})
        assert response.status_code == 302 and response["Location"] == "/lanes/fast-draft/", target
    kept = client.post("/lanes/fast-draft/notice/dismiss/", {"next": "/dashboard/"})
    assert kept["Location"] == "/dashboard/"
