import hashlib
import io
import json
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from console.celery import app
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane, ModelVersion
from lanes.tasks import run_job
from tests.conftest import wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_brief_posted_over_http_becomes_a_png_of_the_requested_size(worker, creative_client, media_root):
    response = creative_client.post(
        reverse("brief-new"),
        {"prompt": "A lemonade stand poster", "intent": "draft", "width": "96", "height": "64", "seed": "7"},
    )
    assert response.status_code == 302
    job = wait_for_job(Job.objects.get().pk)

    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.started_at and job.finished_at and job.dispatched_at
    assert job.run_seconds > 0 and job.peak_memory_bytes > 0
    assert job.device == "cpu" and job.worker
    artifact = job.artifacts.get()
    path = Path(media_root) / artifact.path
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (96, 64)
    assert artifact.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    page = creative_client.get(reverse("job-image", args=[job.pk, "final"]))
    assert page.status_code == 200 and page["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(page.content)).size == (96, 64)


def test_the_same_seed_gives_byte_identical_images(worker, creative):
    jobs = [submit_brief(creative, prompt="Same seed", intent="draft", seed=1234) for _ in range(2)]
    done = [wait_for_job(job.pk) for job in jobs]
    digests = {job.artifacts.get().sha256 for job in done}
    assert all(job.state == Job.State.SUCCEEDED for job in done)
    assert len(digests) == 1
    other = wait_for_job(submit_brief(creative, prompt="Same seed", intent="draft", seed=1235).pk)
    assert other.artifacts.get().sha256 not in digests


def test_a_task_delivered_twice_runs_the_job_once(worker, creative):
    job = submit_brief(creative, prompt="Delivered twice", intent="draft")
    # Two more copies of the message on top of the one submit_brief sent.
    run_job.apply_async(args=(job.pk,), queue=job.lane.queue)
    run_job.apply_async(args=(job.pk,), queue=job.lane.queue)
    job = wait_for_job(job.pk)
    assert job.state == Job.State.SUCCEEDED
    assert job.attempts == 1
    assert Artifact.objects.filter(job=job).count() == 1
    # The duplicates are consumed and find nothing to do.
    assert run_job.apply(args=(job.pk,)).get() == "skipped: succeeded"


def test_a_broken_checkpoint_fails_the_job_and_the_worker_keeps_serving(worker, creative, settings):
    broken = Path(settings.MODELS_ROOT) / "broken-sd"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["x"]}))
    version = ModelVersion.objects.create(name="broken", location="broken-sd", content_hash="broken")
    lane = Lane.objects.get(name="fast-draft")
    lane.active_version = version
    lane.save(update_fields=["active_version"])

    failed = wait_for_job(submit_brief(creative, prompt="Doomed", intent="draft").pk)
    assert failed.state == Job.State.FAILED
    assert "could not be loaded" in failed.error and "broken-sd" in failed.error
    assert not failed.artifacts.exists()

    ok = wait_for_job(submit_brief(creative, prompt="Still alive", intent="final").pk)
    assert ok.state == Job.State.SUCCEEDED


def test_a_job_deleted_before_it_runs_is_skipped(worker, creative):
    job = submit_brief(creative, prompt="Gone", intent="draft")
    job_id = job.pk
    Job.objects.filter(pk=job_id).delete()
    assert run_job.apply(args=(job_id,)).get() == "missing"


def test_the_worker_records_its_heartbeat(worker):
    from lanes.heartbeat import worker_ident
    from lanes.models import Worker

    row = Worker.objects.get(ident=worker_ident())
    assert row.device == "cpu" and "lane.fast-draft" in row.queues
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
