import hashlib
import io
import json
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from console.celery import app
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane, ModelVersion, hash_checkpoint
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
    assert job.run_seconds > 0 and job.peak_memory_bytes is not None
    assert job.gpu_seconds == job.run_seconds  # CPU-seconds: device time is counted on any device
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
    # Its real hash: the files are as registered (no hash guard), they just do not load.
    version = ModelVersion.objects.create(name="broken", location="broken-sd", content_hash=hash_checkpoint(broken))
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


def max_overlap(jobs) -> int:
    """The most jobs whose [started, finished] running intervals overlap at one instant."""
    edges = sorted([(j.started_at, 1) for j in jobs] + [(j.finished_at, -1) for j in jobs], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


def test_a_lane_never_runs_more_than_its_cap_and_a_new_cap_applies_live(worker, creative):
    lane = Lane.objects.get(name="fast-draft")
    # Thresholds out of reach: this test is about the cap, not about admission.
    lane.max_concurrency, lane.defer_depth, lane.hard_cap, lane.latency_slo_ms = 1, 50, 100, 600_000
    lane.save()
    first = [submit_brief(creative, prompt=f"one {i}", intent="draft", steps=8) for i in range(5)]
    first = [wait_for_job(job.pk) for job in first]
    assert {(job.state, job.lane.name) for job in first} == {("succeeded", "fast-draft")}
    assert {job.worker for job in first} == {first[0].worker}  # one worker, one GPU
    assert max_overlap(first) == 1

    Lane.objects.filter(pk=lane.pk).update(max_concurrency=3)  # as the console does, no restart
    second = [submit_brief(creative, prompt=f"three {i}", intent="draft", steps=8) for i in range(9)]
    second = [wait_for_job(job.pk) for job in second]
    assert {(job.state, job.lane.name) for job in second} == {("succeeded", "fast-draft")}
    assert 1 < max_overlap(second) <= 3


@pytest.fixture
def oom_once(monkeypatch):
    """Fault injection at the one seam that calls the pipeline: the first call runs out of GPU memory."""
    import torch

    from lanes.engines import Engine

    real = Engine.invoke
    calls = []

    def invoke(pipe, **kwargs):
        calls.append(pipe.__class__.__name__)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(pipe, **kwargs)

    monkeypatch.setattr(Engine, "invoke", staticmethod(invoke))
    return calls


def test_an_oom_is_retried_on_the_fallback_lane_and_the_worker_lives(worker, creative, oom_once):
    from lanes.heartbeat import worker_ident
    from lanes.models import Worker

    job = wait_for_job(submit_brief(creative, prompt="Too big", intent="draft").pk)
    assert job.state == Job.State.SUCCEEDED
    assert job.oom_count == 1 and job.lane.name == "fallback" and job.requested_lane.name == "fast-draft"
    assert job.admission == "rerouted" and "out of GPU memory on fast-draft" in job.admission_reason
    assert Worker.objects.get(ident=worker_ident()).oom_count == 1
    after = wait_for_job(submit_brief(creative, prompt="Next one", intent="draft").pk)
    assert after.state == Job.State.SUCCEEDED and after.worker == job.worker


def test_an_oom_without_a_fallback_is_retried_once_in_place(worker, creative, oom_once):
    Lane.objects.filter(name="fast-draft").update(fallback=None)
    job = wait_for_job(submit_brief(creative, prompt="Retry here", intent="draft").pk)
    assert job.state == Job.State.SUCCEEDED and job.lane.name == "fast-draft" and job.oom_count == 1
    assert len(oom_once) == 2


def test_a_job_that_runs_out_of_memory_twice_fails_with_the_reason(worker, creative, monkeypatch):
    import torch

    from lanes.engines import Engine

    def invoke(pipe, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(Engine, "invoke", staticmethod(invoke))
    Lane.objects.filter(name="fast-draft").update(fallback=None)
    job = wait_for_job(submit_brief(creative, prompt="Never fits", intent="draft").pk)
    assert job.state == Job.State.FAILED and job.oom_count == 2
    assert "OutOfMemoryError" in job.error


def test_a_budget_too_small_for_two_pipelines_evicts_and_no_job_fails(worker, creative, settings, monkeypatch):
    import shutil

    from lanes import engines

    copy = Path(settings.MODELS_ROOT) / "demo-copy-2"
    if not copy.exists():
        shutil.copytree(Path(settings.MODELS_ROOT) / "demo-tiny-sd", copy)
    other = ModelVersion.objects.create(name="copy", location="demo-copy-2", content_hash=hash_checkpoint(copy))
    Lane.objects.filter(name="final-render").update(active_version=other)
    with engines.EngineCache(budget_bytes=None).use(other, width=128, height=128) as probe:
        budget = probe.weights_bytes * 3 // 2 + probe.activation_bytes(128, 128)
    cache = engines.EngineCache(budget_bytes=budget)
    monkeypatch.setattr(engines, "engine_cache", cache)

    jobs = []
    for i in range(3):
        jobs.append(submit_brief(creative, prompt=f"a{i}", intent="draft"))
        jobs.append(submit_brief(creative, prompt=f"b{i}", intent="final"))
    done = [wait_for_job(job.pk) for job in jobs]
    assert {job.state for job in done} == {"succeeded"}
    assert cache.evictions >= 1
    assert cache.used_bytes() <= cache.budget


def test_a_cold_start_shows_loading_and_records_the_load_apart_from_the_run(worker, creative, monkeypatch):
    import time

    from lanes import engines

    monkeypatch.setattr(engines, "engine_cache", engines.EngineCache(budget_bytes=None))  # nothing loaded yet
    real_load = engines.load_pipeline
    stages_while_loading = []

    def slow_load(version, device):
        # What the console reads while the model loads; then a load long enough to tell apart from the run.
        stages_while_loading.extend(Job.objects.filter(state=Job.State.RUNNING).values_list("stage", flat=True))
        time.sleep(0.6)
        return real_load(version, device)

    monkeypatch.setattr(engines, "load_pipeline", slow_load)
    cold = wait_for_job(submit_brief(creative, prompt="Cold start", intent="draft").pk)
    warm = wait_for_job(submit_brief(creative, prompt="Warm", intent="draft").pk)

    assert stages_while_loading == [Job.Stage.LOADING]
    assert cold.state == warm.state == Job.State.SUCCEEDED and cold.stage == Job.Stage.DRAFT
    assert cold.load_seconds >= 0.6 and warm.load_seconds is None
    assert cold.execution_seconds >= cold.load_seconds
    assert cold.run_only_seconds == pytest.approx(cold.execution_seconds - cold.load_seconds)
