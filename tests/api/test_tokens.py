"""Personal API tokens: created on the console (shown once, stored hashed), used, expired, revoked, audited."""

import hashlib
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiToken
from lanes.models import AuditEvent
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_a_token_is_shown_once_stored_hashed_and_acts_as_its_user(client, users, demo_lanes):
    client.force_login(users["creative"])
    page = client.post("/account/tokens/", {"name": "CMS export"})
    assert page.status_code == 200
    secret = re.search(r'id="token-secret">(lw_[^<]+)<', page.text).group(1)
    token = ApiToken.objects.get()
    assert token.user == users["creative"] and token.prefix == secret[:10] and secret[:10] in page.text
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest() and secret not in str(token.__dict__)
    assert secret not in client.get("/account/tokens/").text  # never shown again
    assert AuditEvent.objects.filter(action="token.create", actor=users["creative"]).exists()

    client.logout()
    assert token.last_used_at is None
    response = client.get("/api/v1/jobs", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    # It is the creative: ops endpoints refuse it.
    assert client.get("/api/v1/lanes", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 403


def test_an_expired_token_stops_working(client, users):
    token, secret = ApiToken.issue(users["ops"], "short", expires_at=timezone.now() + timedelta(hours=1))
    assert client.get("/api/v1/lanes", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/lanes", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    token.refresh_from_db()
    assert token.state == "expired"


def test_a_user_revokes_their_own_token_and_an_admin_revokes_anyones(client, users):
    mine, secret = ApiToken.issue(users["creative"], "mine")
    theirs, _ = ApiToken.issue(users["ops"], "theirs")
    client.force_login(users["creative"])
    assert "theirs" not in client.get("/account/tokens/").text
    assert client.post(f"/account/tokens/{theirs.pk}/revoke/").status_code == 404  # not theirs to see
    assert client.post(f"/account/tokens/{mine.pk}/revoke/").status_code == 302
    mine.refresh_from_db()
    assert mine.state == "revoked"
    assert client.get("/api/v1/jobs", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401

    client.force_login(users["admin"])
    listing = client.get("/account/tokens/").text
    assert "theirs" in listing and "olive" in listing
    assert client.post(f"/account/tokens/{theirs.pk}/revoke/").status_code == 302
    theirs.refresh_from_db()
    assert theirs.revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoke").count() == 2


def test_a_bad_token_form_is_a_400_with_the_field_named(client, users):
    client.force_login(users["creative"])
    page = client.post("/account/tokens/", {"name": "", "expires_in_days": "-3"})
    assert page.status_code == 400 and not ApiToken.objects.exists()
    assert "This field is required" in page.text and "greater than or equal to 1" in page.text


def test_a_deactivated_user_s_token_stops_working(client, db):
    user = make_user("gone", "ops")
    _, secret = ApiToken.issue(user, "old")
    user.is_active = False
    user.save()
    assert client.get("/api/v1/lanes", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
