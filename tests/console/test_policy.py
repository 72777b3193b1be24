import hashlib
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from lanes.models import Lane
from lanes.policy import export
from tests.conftest import make_user

# The README's example policy, as a new user pastes it.
_README = (Path(settings.BASE_DIR) / "README.md").read_text()
README_EXAMPLE = "routes:" + _README.split("```yaml\nroutes:", 1)[1].split("```", 1)[0]


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


def test_an_admin_sees_the_changes_first_and_applies_them_on_confirming(admin_client, demo_lanes):
    before = export()
    text = before.replace("max_concurrency: 2", "max_concurrency: 3", 1)
    preview = admin_client.post(reverse("policy"), form(text))
    assert preview.status_code == 200 and 'id="policy-confirm"' in preview.text
    assert "fallback <small>(max_concurrency)</small>" in preview.text  # the one change, by lane and key
    assert "diff-disabled-lanes" not in preview.text and "diff-removed-intents" not in preview.text
    assert export() == before  # shown, not applied
    confirmed = {**form(text), "confirm": "yes"}
    response = admin_client.post(reverse("policy"), confirmed, follow=True)
    message = [str(m) for m in response.context["messages"]][0]
    # The one change, and (true here: no worker runs in this test) that nothing consumes the lanes.
    assert message.startswith("Policy applied: changed lanes: fallback (max_concurrency); no live worker consumes")
    assert Lane.objects.get(name="fallback").max_concurrency == 3


def test_a_partial_policy_lists_every_lane_it_disables_and_intent_it_removes(admin_client, demo_lanes, creative):
    from lanes.actions import submit_brief

    waiting = submit_brief(creative, prompt="queued before the change", intent="draft")
    text = README_EXAMPLE
    preview = admin_client.post(reverse("policy"), form(text))
    assert preview.status_code == 200
    disabled = sorted(Lane.objects.filter(enabled=True).values_list("name", flat=True))
    assert f'id="diff-disabled-lanes">{", ".join(disabled)}</dd>' in preview.text
    assert 'id="diff-added-lanes">fast_draft, final_render</dd>' in preview.text
    assert 'id="diff-removed-intents">' in preview.text and "hires" in preview.text
    assert f'id="diff-affected-jobs">1 on {waiting.lane.name}</dd>' in preview.text
    assert 'id="diff-unconsumed-lanes">fast_draft, final_render' in preview.text  # no worker runs here
    assert not Lane.objects.filter(name="fast_draft").exists()
    response = admin_client.post(reverse("policy"), {**form(text), "confirm": "yes"}, follow=True)
    message = [str(m) for m in response.context["messages"]][0]
    assert message.startswith("Policy applied: added lanes: fast_draft, final_render; ")
    assert f"disabled lanes: {', '.join(disabled)}" in message and "removed intents: " in message
    assert "nothing else changed" not in message
    assert set(Lane.objects.filter(enabled=True).values_list("name", flat=True)) == {"fast_draft", "final_render"}
    assert "data-no-consumer" in response.text  # flagged in the lane table too


def test_a_confirmation_sent_after_someone_else_changed_the_policy_is_refused(admin_client, demo_lanes):
    from lanes import control

    text = export().replace("max_concurrency: 2", "max_concurrency: 3", 1)
    confirmed = {**form(text), "confirm": "yes"}  # the digest the preview was computed against
    control.update_limits(Lane.objects.get(name="preview"), {"max_concurrency": 4}, make_user("olive", "ops"))
    assert admin_client.post(reverse("policy"), confirmed).status_code == 409
    assert Lane.objects.get(name="fallback").max_concurrency == 2


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
