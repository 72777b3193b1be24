"""The mixed stack in the browser: a brief on each family's lane renders live (progress events
over the websocket, the image without a reload)."""

import re

import pytest
from playwright.sync_api import expect

from lanes.models import Job
from tests.conftest import running_worker, wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)

# Record what the page's websocket receives, to check the per-step progress events.
RECORD_EVENTS = """
(() => {
  window.__events = [];
  const Native = window.WebSocket;
  window.WebSocket = function (...args) {
    const socket = new Native(...args);
    socket.addEventListener("message", (m) => { try { window.__events.push(JSON.parse(m.data)); } catch (e) {} });
    return socket;
  };
  window.WebSocket.prototype = Native.prototype;
})();
"""


def test_briefs_on_sdxl_sd3_and_flux_lanes_render_live_in_the_browser(demo_lanes, live_server_url, page, creative):
    page.add_init_script(RECORD_EVENTS)
    page.goto(f"{live_server_url}/login/?next=/briefs/new/")
    page.fill("input[name=username]", "casey")
    page.fill("input[name=password]", "casey-password-1")
    page.click("button[type=submit]")
    for intent in ("sdxl", "sd3", "flux"):
        page.goto(f"{live_server_url}/briefs/new/")
        page.fill("textarea[name=prompt]", f"A lighthouse at dusk, {intent}")
        page.select_option("select[name=intent]", intent)
        page.click("button:has-text('Submit brief')")
        expect(page).to_have_url(re.compile(r"/jobs/\?new=\d+"))
    jobs = {job.intent: job for job in Job.objects.all()}
    expect(page.locator("#live-status")).to_have_text("live")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    with running_worker():
        for job in jobs.values():
            # First the job itself (a cold SDXL, SD3 or Flux load on a busy 2-core machine takes a while),
            # then the page: it must show what the database says without a reload, within a push (or, for a
            # push the channel layer lost, live.js's resync after 10 s of silence).
            done = wait_for_job(job.pk, timeout=300)
            assert done.state == Job.State.SUCCEEDED, f"{job.intent} job: {done.state}: {done.error}"
            card = page.locator(f"#job-{job.pk}")
            expect(card.locator("[data-state]")).to_have_text("succeeded", timeout=30_000)
            expect(card.locator("img")).to_be_visible()
    assert navigations == []
    events = page.evaluate("window.__events")
    for intent, job in jobs.items():
        job.refresh_from_db()
        assert job.model_version.family == intent and job.lane.name == intent
        steps = sorted({e["step"] for e in events if e.get("type") == "job.progress" and e["job_id"] == job.pk})
        assert steps == list(range(1, job.steps + 1)), (intent, steps)
        card = page.locator(f"#job-{job.pk}")
        natural = card.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert natural == [job.width, job.height]
