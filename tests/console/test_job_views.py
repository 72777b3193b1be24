import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments import definition as definitions
from experiments import runner
from lanes import retention
from lanes.actions import submit_brief
from lanes.models import Job, Worker
from tests.conftest import make_user
from tests.lanes.finished import finished_job


@pytest.fixture
def job(creative, demo_lanes):
    return submit_brief(creative, prompt="A teal sneaker ad", intent="draft", seed=3)


@pytest.mark.parametrize("name", ["job-list", "brief-new"])
def test_anonymous_pages_redirect_to_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_job_pages_of_anonymous_redirect_to_login(client, job):
    for url in (reverse("job-detail", args=[job.pk]), reverse("job-card", args=[job.pk])):
        assert client.get(url).status_code == 302
    assert client.post(reverse("job-cancel", args=[job.pk])).status_code == 302
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED


def test_the_job_list_shows_the_users_jobs_with_state(creative_client, job):
    response = creative_client.get(reverse("job-list"))
    assert response.status_code == 200
    assert f'id="job-{job.pk}"' in response.text and "A teal sneaker ad" in response.text
    assert "queued" in response.text and "fast-draft" in response.text and "demo-tiny-sd-v1" in response.text


def test_another_users_job_does_not_exist_for_them(client, other_creative, job):
    client.force_login(other_creative)
    assert f'id="job-{job.pk}"' not in client.get(reverse("job-list")).text
    for url in (reverse("job-detail", args=[job.pk]), reverse("job-card", args=[job.pk])):
        assert client.get(url).status_code == 404
    assert client.get(reverse("job-image", args=[job.pk, "final"])).status_code == 404
    assert client.post(reverse("job-cancel", args=[job.pk])).status_code == 404
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED


def test_staff_see_every_job(admin_client, job):
    assert admin_client.get(reverse("job-detail", args=[job.pk])).status_code == 200


def test_cancelling_a_queued_job(creative_client, job):
    response = creative_client.post(reverse("job-cancel", args=[job.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200 and "cancelled" in response.text
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED and job.finished_at


def test_a_job_that_started_cannot_be_cancelled(creative_client, job):
    job.mark_running("elsewhere:1", None, "cpu")
    response = creative_client.post(reverse("job-cancel", args=[job.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 409 and "only queued or deferred" in response.text
    response = creative_client.post(reverse("job-cancel", args=[job.pk]), follow=True)
    assert "only queued or deferred" in response.text
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING


def test_the_detail_page_has_a_live_partial(creative_client, job):
    full = creative_client.get(reverse("job-detail", args=[job.pk]))
    partial = creative_client.get(reverse("job-detail", args=[job.pk]), headers={"HX-Request": "true"})
    assert "<html" in full.text and "<html" not in partial.text
    assert f'id="job-detail-{job.pk}"' in partial.text


def test_the_job_list_query_count_does_not_grow_with_jobs(creative_client, creative, job):
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert creative_client.get(reverse("job-list")).status_code == 200
        return len(ctx)

    few = count()
    for i in range(10):
        submit_brief(creative, prompt=f"More {i}", intent="final")
    assert count() == few


def test_a_missing_image_is_a_404(creative_client, job):
    assert creative_client.get(reverse("job-image", args=[job.pk, "final"])).status_code == 404
    assert creative_client.get(reverse("job-image", args=[job.pk, "bogus"])).status_code == 404


def test_a_running_cascade_job_shows_a_bar_per_stage_and_the_time_left(creative_client, creative, demo_lanes):
    from datetime import timedelta

    from django.utils import timezone

    job = submit_brief(creative, prompt="Hires", intent="hires")
    job.mark_running("w:1", None, "cpu")
    began = time.monotonic()
    Job.objects.filter(pk=job.pk).update(progress_step=6, started_at=timezone.now() - timedelta(seconds=3))
    page = creative_client.get(reverse("job-detail", args=[job.pk])).text
    spent = time.monotonic() - began
    assert page.count("data-stage-bar") == 2
    assert ">draft</span>" in page and ">upscale</span>" in page
    assert ">4/4</small>" in page and ">2/4</small>" in page  # draft done, upscale half way
    # 3 s for 6 steps, 2 to go: 1 s, plus a third of however long the request itself took.
    eta = re.search(r"about (\d+\.\d) s left", page)
    assert eta and 1.0 <= float(eta.group(1)) <= (3 + spent) / 3 + 0.05, (eta, spent)


def test_a_released_job_says_how_long_admission_held_it_back(creative_client, job):
    held = timezone.now() - timedelta(seconds=10)
    Job.objects.filter(pk=job.pk).update(
        admission="deferred", admission_reason="fast-draft saturated", deferred_at=held,
        released_at=held + timedelta(seconds=2.5),
    )  # fmt: skip
    detail = creative_client.get(reverse("job-detail", args=[job.pk])).text
    assert "fast-draft saturated; released after 2.5 s" in detail
    assert 'title="fast-draft saturated; released after 2.5 s"' in creative_client.get(reverse("job-list")).text


def test_a_job_whose_image_was_pruned_says_so_instead_of_a_broken_image(
    creative_client, creative, demo_lanes, django_capture_on_commit_callbacks
):
    job = finished_job(creative, days_old=45)
    with django_capture_on_commit_callbacks(execute=True):
        retention.prune(days=30)
    image_url = reverse("job-image", args=[job.pk, "final"])

    page = creative_client.get(reverse("job-detail", args=[job.pk]))
    assert page.status_code == 200
    assert "final image pruned after 45 days" in page.text and image_url not in page.text
    listing = creative_client.get(reverse("job-list"))
    assert listing.status_code == 200
    assert "image pruned after 45 days" in listing.text and image_url not in listing.text
    gone = creative_client.get(image_url)
    assert gone.status_code == 410 and "pruned after 45 days" in gone.text

    kept = finished_job(creative, days_old=1, seed=2)
    page = creative_client.get(reverse("job-detail", args=[kept.pk]))
    assert reverse("job-image", args=[kept.pk, "final"]) in page.text and "pruned" not in page.text


def test_a_job_waiting_on_a_lane_no_live_worker_consumes_says_so(creative_client, job):
    assert job.state == Job.State.QUEUED
    page = creative_client.get(reverse("job-detail", args=[job.pk]))
    assert f"· no worker consumes lane {job.lane.name}" in page.text and "waiting for a slot" not in page.text
    Worker.objects.create(ident="h:9", hostname="h", pid=9, queues="lane.other,celery")  # alive, elsewhere
    Worker.objects.create(ident="h:8", hostname="h", pid=8, queues=job.lane.queue, stopped_at=timezone.now())
    page = creative_client.get(reverse("job-detail", args=[job.pk]))
    assert f"no worker consumes lane {job.lane.name}" in page.text
    Worker.objects.create(ident="h:7", hostname="h", pid=7, queues=f"celery,{job.lane.queue}")
    page = creative_client.get(reverse("job-detail", args=[job.pk]))
    assert "· waiting for a slot" in page.text and "no worker consumes" not in page.text


def test_experiment_jobs_are_left_out_of_the_job_list_unless_asked_for(creative_client, creative, job):
    experiment = runner.create(
        make_user("ada", "admin"),
        definitions.parse(
            "name: ab\nprompts: [an experiment poster]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
        ),
    )
    runner.pump(experiment.pk)  # what on_commit does after a real request
    cells = list(experiment.cells.exclude(job=None).values_list("job_id", flat=True))
    assert cells  # the experiment made jobs
    Job.objects.filter(pk__in=cells).update(owner=creative)
    page = creative_client.get(reverse("job-list")).text
    assert f'id="job-{job.pk}"' in page and not any(f'id="job-{pk}"' in page for pk in cells)
    assert 'id="experiments-toggle" href="?experiments=1">Show experiment jobs' in page
    shown = creative_client.get(reverse("job-list") + "?experiments=1&state=queued").text
    assert f'id="job-{job.pk}"' in shown and all(f'id="job-{pk}"' in shown for pk in cells)
    assert 'href="?state=queued">Hide experiment jobs' in shown


def test_favicon_ico_is_there_for_every_page(client, db):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("console/favicon.ico")
    icon = client.get(response["Location"])
    assert icon.status_code == 200 and b"".join(icon.streaming_content)[:4] == b"\x00\x00\x01\x00"
    page = client.get(reverse("login")).text
    assert '<link rel="icon" href="/static/console/favicon.svg" type="image/svg+xml">' in page


def test_a_job_whose_model_loads_reads_loading_model_then_shows_the_load_apart_from_the_run(creative_client, job):
    assert job.mark_running("gpu0@host", 0, "cuda", "NVIDIA L4") and job.mark_loading()
    for name in ("job-detail", "job-card"):
        page = creative_client.get(reverse(name, args=[job.pk]), headers={"HX-Request": "true"})
        assert "loading model…" in page.text and f"step 0/{job.total_steps}" not in page.text
        assert 'data-job-stage="loading"' in page.text  # the live script re-reads the job when the stage moves on
    job.mark_loaded(8.09)
    job.refresh_from_db()
    assert (job.stage, job.load_seconds) == (Job.Stage.DRAFT, pytest.approx(8.09))
    page = creative_client.get(reverse("job-detail", args=[job.pk]))
    assert "loading model…" not in page.text and f"step 0/{job.total_steps}" in page.text
    started = timezone.now() - timedelta(seconds=9.47)
    Job.objects.filter(pk=job.pk).update(started_at=started, finished_at=started + timedelta(seconds=9.47))
    job.mark_succeeded(run_seconds=1.2, gpu_seconds=1.2, peak_memory_bytes=1 << 20)
    Job.objects.filter(pk=job.pk).update(finished_at=started + timedelta(seconds=9.47))
    page = creative_client.get(reverse("job-detail", args=[job.pk]))
    assert "<dt>Run</dt><dd>1.380 s" in page.text and 'id="load-seconds">8.090 s' in page.text
    assert "<dt>GPU-s</dt><dd>1.200</dd>" in page.text


def test_a_job_lost_while_its_model_loaded_starts_again_from_the_draft_stage(job):
    assert job.mark_running("gpu0@host", 0, "cuda") and job.mark_loading()
    assert job.requeue_from("gpu0@host")
    job.refresh_from_db()
    assert job.stage == Job.Stage.LOADING and job.state == Job.State.QUEUED
    assert job.mark_running("gpu1@host", 1, "cuda")
    job.refresh_from_db()
    assert (job.stage, job.load_seconds) == (Job.Stage.DRAFT, None)
