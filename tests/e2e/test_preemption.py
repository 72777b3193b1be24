"""A job paused for a higher class says so on its open page as it happens, and the note goes when it resumes.

The background job is held at a step (tests.gates) only to order "the page is open, then a critical
brief arrives"; the pause, its push over the websocket and the page's re-read are the product's own.
"""

import pytest
from playwright.sync_api import expect

from lanes.actions import submit_brief
from lanes.models import Job, Lane
from tests.conftest import wait_for_job
from tests.e2e.conftest import log_in
from tests.gates import Gates

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_open_job_page_shows_the_pause_for_a_critical_render_live(
    worker, live_server_url, page, creative, monkeypatch
):
    Lane.objects.filter(name="fast-draft").update(max_concurrency=1)
    gates = Gates(monkeypatch)
    held = gates.until_waiting("Poster, background", 1)  # until the critical brief waits for its slot
    critical_held, release_critical = gates.until_set("Poster, critical", 1)
    background = submit_brief(creative, prompt="Poster, background", intent="draft", seed=5, priority="background")
    assert held.wait(60)

    log_in(page, live_server_url, "casey", f"/jobs/{background.pk}/")
    detail = page.locator(f"#job-detail-{background.pk}")
    expect(detail.locator("[data-state]")).to_have_text("running")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#paused-note")).to_have_count(0)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    critical = submit_brief(creative, prompt="Poster, critical", intent="draft", seed=6, priority="critical")
    assert critical_held.wait(60)
    # Within a RESYNC_MS-free window: this is the pause's own push, not the page's periodic catch-up.
    expect(page.locator("#paused-note")).to_contain_text("paused for a critical render", timeout=5_000)
    assert Job.objects.get(pk=background.pk).is_paused

    release_critical.set()
    assert wait_for_job(critical.pk).state == Job.State.SUCCEEDED
    expect(detail.locator("[data-state]")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#paused-note")).to_have_count(0)
    assert navigations == []  # every change came over the websocket, not by a reload
    background = wait_for_job(background.pk)
    assert background.state == Job.State.SUCCEEDED and background.preemptions == 1
