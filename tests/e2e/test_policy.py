"""An admin pastes a partial policy: the Policy page shows what it would change, applies it on
confirming, says truly what changed, and flags lanes no worker consumes."""

import pytest
from playwright.sync_api import expect

from lanes.actions import submit_brief
from lanes.models import Job, Lane, Route
from tests.conftest import make_user
from tests.console.test_policy import README_EXAMPLE

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_admin_sees_the_changes_confirms_and_is_told_the_truth(demo_lanes, live_server_url, page, settings):
    settings.ADMISSION_CONTROL = False
    make_user("ada", "admin")
    waiting = submit_brief(make_user("casey"), prompt="queued before the change", intent="draft")
    assert waiting.lane.name == "fast-draft"  # no worker runs here: it stays queued
    enabled = sorted(Lane.objects.filter(enabled=True).values_list("name", flat=True))
    intents = set(Route.objects.values_list("intent", flat=True))

    page.goto(f"{live_server_url}/login/?next=/policy/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    page.fill("textarea[name=policy]:not([hidden])", README_EXAMPLE)
    page.click("text=Review changes")

    expect(page.locator("#diff-added-lanes")).to_have_text("fast_draft, final_render")
    expect(page.locator("#diff-disabled-lanes")).to_have_text(", ".join(enabled))
    expect(page.locator("#diff-changed-intents")).to_contain_text("draft")
    expect(page.locator("#diff-removed-intents")).to_have_text(", ".join(sorted(intents - {"draft", "final"})))
    expect(page.locator("#diff-affected-jobs")).to_have_text("1 on fast-draft")
    expect(page.locator("#diff-unconsumed-lanes")).to_contain_text("fast_draft, final_render")
    assert not Lane.objects.filter(name="fast_draft").exists()  # shown, nothing applied yet

    page.click("#policy-confirm button")
    flash = page.locator(".flash")
    expect(flash).to_contain_text("Policy applied: added lanes: fast_draft, final_render;")
    expect(flash).to_contain_text(f"disabled lanes: {', '.join(enabled)}")
    expect(flash).to_contain_text("removed intents: ")
    expect(flash).not_to_contain_text("nothing else changed")
    expect(page.locator("#lane-fast_draft [data-no-consumer]")).to_be_visible()
    assert set(Lane.objects.filter(enabled=True).values_list("name", flat=True)) == {"fast_draft", "final_render"}
    assert set(Route.objects.values_list("intent", flat=True)) == {"draft", "final"}

    # A brief sent to the new lane says why it waits.
    job = submit_brief(make_user("cody"), prompt="a draft after the change", intent="draft")
    assert job.lane.name == "fast_draft" and Job.objects.get(pk=job.pk).state == Job.State.QUEUED
    page.goto(f"{live_server_url}/jobs/{job.pk}/")
    expect(page.locator("[data-eta]")).to_have_text("· no worker consumes lane fast_draft")
