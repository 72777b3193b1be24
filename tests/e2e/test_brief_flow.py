import re

import pytest
from playwright.sync_api import expect

from lanes.models import Job
from tests.conftest import running_worker

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_creative_logs_in_submits_a_brief_and_sees_the_image_without_reloading(
    demo_lanes, live_server_url, page, creative
):
    page.goto(f"{live_server_url}/jobs/")
    expect(page).to_have_url(re.compile(r"/login/"))
    page.fill("input[name=username]", "casey")
    page.fill("input[name=password]", "casey-password-1")
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()

    page.click("text=New brief >> nth=0")
    # A bad value is answered next to its field, without a job.
    page.fill("textarea[name=prompt]", "")
    page.click("button:has-text('Submit brief')")
    expect(page.locator("#prompt-error")).to_contain_text("required")
    assert Job.objects.count() == 0

    page.fill("textarea[name=prompt]", "A neon 'OPEN' sign over a noodle bar")
    page.fill("input[name=expected_text]", "OPEN")
    page.select_option("select[name=intent]", "final")
    page.click("button:has-text('Submit brief')")

    expect(page).to_have_url(re.compile(r"/jobs/\?new=\d+"))
    job = Job.objects.get()
    card = page.locator(f"#job-{job.pk}")
    # No worker runs yet: the job waits, queued, on the page.
    expect(card.locator("[data-state]")).to_have_text("queued")
    expect(card.locator("img")).to_have_count(0)
    expect(page.locator("#live-status")).to_have_text("live")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    with running_worker():
        image = card.locator("img")
        expect(image).to_be_visible(timeout=30_000)
        expect(card.locator("[data-state]")).to_have_text("succeeded")
    assert navigations == []  # it arrived over the websocket, not by a reload
    natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [job.width, job.height]
    expect(card).to_contain_text("final-render")
    expect(card).to_contain_text(str(Job.objects.get().seed))

    card.locator("a").first.click()
    expect(page.get_by_role("heading", name=f"Job {job.pk}")).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("demo-tiny-sd-v1")


def test_a_job_waiting_for_a_cold_model_reads_loading_model_live(
    demo_lanes, live_server_url, page, creative, monkeypatch
):
    import threading

    from lanes import engines
    from lanes.actions import submit_brief

    monkeypatch.setattr(engines, "engine_cache", engines.EngineCache(budget_bytes=None))  # a fresh worker
    release = threading.Event()
    real_load = engines.load_pipeline

    def held_load(version, device):  # the load lasts until the browser has shown it
        release.wait(60)
        return real_load(version, device)

    monkeypatch.setattr(engines, "load_pipeline", held_load)
    page.goto(f"{live_server_url}/login/")
    page.fill("input[name=username]", "casey")
    page.fill("input[name=password]", "casey-password-1")
    page.click("button[type=submit]")
    job = submit_brief(creative, prompt="After a restart", intent="draft")
    page.goto(f"{live_server_url}/jobs/{job.pk}/")
    expect(page.locator("#live-status")).to_have_text("live")
    text = page.locator("[data-progress-text]")
    try:
        with running_worker():
            try:  # the load is held until the page shows it: waiting longer costs nothing when it works
                expect(text).to_have_text("loading model…", timeout=90_000)
            except AssertionError as exc:  # did the page miss the event, or did the worker not get this far?
                job.refresh_from_db()
                raise AssertionError(f"job {job.state} / {job.stage} in the database") from exc
            release.set()
            expect(page.locator(f"#job-detail-{job.pk} [data-state]")).to_have_text("succeeded", timeout=60_000)
    finally:
        release.set()
    expect(page.locator("#load-seconds")).to_contain_text("not counted as run time")
    assert Job.objects.get(pk=job.pk).load_seconds > 0


def test_an_open_page_catches_up_with_a_change_whose_push_never_came(demo_lanes, live_server_url, page, creative):
    """Pushes are at-most-once: a page with unfinished jobs that hears nothing for a while asks for a
    snapshot, so a lost push (here: a change made without one) still reaches it, socket open throughout."""
    from django.utils import timezone

    from lanes.actions import submit_brief

    loading = submit_brief(creative, prompt="Loads quietly", intent="draft")  # no worker runs: both wait
    ending = submit_brief(creative, prompt="Ends quietly", intent="draft")
    page.goto(f"{live_server_url}/login/")
    page.fill("input[name=username]", "casey")
    page.fill("input[name=password]", "casey-password-1")
    page.click("button[type=submit]")
    page.goto(f"{live_server_url}/jobs/")
    expect(page.locator("#live-status")).to_have_text("live")
    closed = []
    page.on("websocket", lambda ws: ws.on("close", lambda _: closed.append(ws.url)))
    # Changed in the database only: no push is sent.
    Job.objects.filter(pk=loading.pk).update(state=Job.State.RUNNING, stage=Job.Stage.LOADING)
    Job.objects.filter(pk=ending.pk).update(state=Job.State.CANCELLED, finished_at=timezone.now())
    expect(page.locator(f"#job-{ending.pk} [data-state]")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator(f"#job-{loading.pk} [data-progress-text]")).to_have_text("loading model…", timeout=30_000)
    assert closed == [] and page.locator("#live-status").text_content() == "live"
