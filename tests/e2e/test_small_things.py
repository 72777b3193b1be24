"""What a new user notices in the browser: re-renders linked both ways, errors without
Django's '__all__', an address bar that stays on the lane, the chosen intent's lane bounds."""

import pytest
from playwright.sync_api import expect

from lanes.models import Job, Verification
from tests.conftest import make_user
from tests.e2e.conftest import log_in
from tests.lanes.finished import finished_job

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_re_rendered_job_and_its_original_link_to_each_other(demo_lanes, live_server_url, page):
    casey = make_user("casey")
    original = finished_job(casey, prompt="A sale poster", expected_text="SALE")
    Verification.objects.create(
        job=original, artifact=original.artifacts.get(), lane=original.lane, model_version=original.model_version,
        expected=["SALE"], status="flagged", reason="missing: 'SALE' was not found",
    )  # fmt: skip
    log_in(page, live_server_url, "casey", "/review/")
    page.click("button:has-text('Re-render')")
    expect(page.locator(".review-item.done")).to_contain_text("re-rendered as job")
    new = Job.objects.get(rerender_of=original)

    page.goto(f"{live_server_url}/jobs/{original.pk}/")
    expect(page.locator("dl.facts")).to_contain_text(f"re-rendered by casey as job {new.pk}")
    page.click(f"dl.facts a:has-text('job {new.pk}')")
    expect(page.get_by_role("heading", name=f"Job {new.pk}")).to_be_visible()
    page.click(f"dl.facts a:has-text('job {original.pk}')")
    expect(page.get_by_role("heading", name=f"Job {original.pk}")).to_be_visible()


def test_a_refused_lane_limit_reads_as_a_sentence_and_leaves_the_address_on_the_lane(demo_lanes, live_server_url, page):
    make_user("olive", "ops")
    log_in(page, live_server_url, "olive", "/lanes/preview/")
    page.fill("#limits-form input[name=defer_depth]", "30")
    page.fill("#limits-form input[name=hard_cap]", "5")
    page.click("#limits-form button[type=submit]")
    flash = page.locator(".flash.error")
    expect(flash).to_contain_text("must be at least the defer depth")
    assert "__all__" not in page.content()
    expect(page).to_have_url(f"{live_server_url}/lanes/preview/")
    expect(page.locator("#limits-form")).to_contain_text("Latency SLO (ms)")


def test_the_brief_form_shows_the_bounds_of_the_chosen_intents_lane(demo_lanes, live_server_url, page):
    make_user("casey")
    log_in(page, live_server_url, "casey", "/briefs/new/")
    page.click("summary:has-text('Advanced')")
    expect(page.locator(".lane-bounds:visible")).to_have_count(1)
    expect(page.locator(".lane-bounds:visible")).to_contain_text("On lane fast-draft: steps 1–12")
    page.select_option("select[name=intent]", "final")
    expect(page.locator(".lane-bounds:visible")).to_have_count(1)
    expect(page.locator(".lane-bounds:visible")).to_contain_text("On lane final-render: steps 1–50")
