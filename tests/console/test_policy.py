import hashlib

import pytest
from django.urls import reverse

from lanes.models import Lane
from lanes.policy import export
from tests.conftest import make_user


def form(text: str) -> dict:
    """The policy form as the page sends it: the edited text and a digest of the policy it was loaded with."""
    return {"policy": text, "based_on": hashlib.sha256(export().encode()).hexdigest()}


@pytest.fixture
def ops_client(client, django_user_model, demo_lanes):
    client.force_login(make_user("olive", "ops"))
    return client


@pytest.mark.parametrize("name", ["policy", "policy-yaml"])
def test_creatives_and_anonymous_cannot_see_the_policy(client, creative, demo_lanes, name):
    assert client.get(reverse(name)).status_code == 302
    client.force_login(creative)
    assert client.get(reverse(name)).status_code == 403


def test_ops_see_lanes_and_intents_but_cannot_apply(ops_client):
    page = ops_client.get(reverse("policy"))
    assert page.status_code == 200 and 'id="lane-fast-draft"' in page.text and "readonly" in page.text
    before = export()
    assert (
        ops_client.post(reverse("policy"), form(before.replace("sample_steps: 4", "sample_steps: 5"))).status_code
        == 403
    )
    assert export() == before
    download = ops_client.get(reverse("policy-yaml"))
    assert download.content.decode() == before


def test_an_admin_applies_a_policy_from_the_console(admin_client, demo_lanes):
    text = export().replace("max_concurrency: 2", "max_concurrency: 3", 1)
    response = admin_client.post(reverse("policy"), form(text), follow=True)
    assert "Policy applied: 10 lanes, 10 intents" in response.text
    assert Lane.objects.get(name="fallback").max_concurrency == 3


def test_a_bad_policy_from_the_console_lists_line_numbered_errors(admin_client, demo_lanes):
    before = export()
    response = admin_client.post(reverse("policy"), form(before.replace("max_concurrency: 2", "max_concurrency: 0", 1)))
    assert response.status_code == 400
    assert "max_concurrency must be at least 1, not 0" in response.text and "line 19" in response.text
    assert export() == before


def test_a_policy_edited_on_a_stale_page_is_refused_instead_of_undoing_a_newer_change(admin_client, demo_lanes):
    from lanes import control

    stale = form(export().replace("sample_steps: 4", "sample_steps: 5", 1))  # the page as loaded
    control.update_limits(Lane.objects.get(name="preview"), {"max_concurrency": 4}, make_user("olive", "ops"))
    response = admin_client.post(reverse("policy"), stale)
    assert response.status_code == 409
    assert "The policy changed since you loaded it (last: olive, lane.limits on preview)" in response.text
    assert Lane.objects.get(name="preview").max_concurrency == 4  # the newer change stands
    assert 'name="based_on" value="' + stale["based_on"] in response.text  # still stale until reloaded
