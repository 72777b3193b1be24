"""Fault: the only GPU worker is killed (SIGKILL) in the middle of a render. With no GPU worker left,
beat's bookkeeping still runs (on the housekeeping queue, here consumed by a CPU-only worker): the job
is marked lost and requeued within heartbeat × lost-after-beats, then a new worker finishes it, once.
Marked `faults` (slow): `pytest -m "not faults"` skips it locally; CI runs it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from console.celery import app
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane, Worker
from tests.conftest import make_user, running_worker, wait_for_job, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]


def start_gpu_worker() -> subprocess.Popen:
    """A real `manage.py gpu_worker` process on fast-draft, on this test's database and broker."""
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "LANEWAY_USE_TEST_DATABASE": "1",
        "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    }  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "manage.py", "gpu_worker", "--lanes", "fast-draft", "--no-control", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_job_on_a_killed_gpu_worker_is_requeued_without_any_gpu_worker_and_finished_once(demo_lanes):
    Lane.objects.filter(name="fast-draft").update(max_steps=300)
    gpu = start_gpu_worker()
    try:
        # 300 steps: long enough (seconds, even on an idle machine) to be seen running with its progress
        # stored (at most every PROGRESS_DB_EVERY_SECONDS) before it is killed.
        job = submit_brief(make_user("casey"), prompt="a long render", intent="draft", steps=300)
        running = wait_until(
            lambda: Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, progress_step__gte=2).first(),
            timeout=90, what="the job running on the GPU worker",
        )  # fmt: skip
        gpu.send_signal(signal.SIGKILL)
        gpu.wait(10)
        killed_at = time.monotonic()
        assert running.worker and not Worker.objects.alive().exclude(ident=running.worker).exists()

        # Beat's bookkeeping, on a CPU worker that serves no lane.
        with running_worker(queues=[settings.HOUSEKEEPING_QUEUE]):

            def requeued():
                app.send_task("lanes.tasks.reconcile_jobs")  # what beat sends every RECONCILE_EVERY seconds
                time.sleep(0.3)
                return Job.objects.filter(pk=job.pk, state=Job.State.QUEUED, lost_workers=1).exists()

            wait_until(requeued, timeout=20, what="the lost job requeued")
        window = settings.WORKER_HEARTBEAT_SECONDS * settings.WORKER_LOST_AFTER_BEATS
        assert time.monotonic() - killed_at < window + 10
        with running_worker():
            done = wait_for_job(job.pk, timeout=240)
        assert done.state == Job.State.SUCCEEDED and done.attempts == 2 and done.lost_workers == 1
        assert Artifact.objects.filter(job=done).count() == 1
    finally:
        if gpu.poll() is None:
            gpu.kill()


def test_a_job_paused_for_a_critical_one_on_a_killed_worker_renders_again_and_equals_its_seed(demo_lanes):
    Lane.objects.filter(name="fast-draft").update(max_steps=300, max_concurrency=1)
    gpu = start_gpu_worker()
    casey = make_user("casey")
    brief = dict(prompt="paused when its worker dies", intent="draft", seed=99, steps=300)  # seconds, when idle
    try:
        background = submit_brief(casey, **brief, priority="background")
        wait_until(
            lambda: Job.objects.filter(pk=background.pk, state=Job.State.RUNNING, progress_step__gte=2).exists(),
            timeout=180, what="the background job running on the GPU worker",  # a cold worker on a busy machine
        )  # fmt: skip
        critical = submit_brief(casey, prompt="critical", intent="draft", seed=1, steps=60, priority="critical")
        paused = wait_until(
            lambda: Job.objects.filter(pk=background.pk, paused_at__isnull=False).first(),
            timeout=60, what="the background job paused for the critical one",
        )  # fmt: skip
        # Killed once the critical job holds the handed-over slot. (Killed before that claim, the critical job
        # would still be queued, its message held unacknowledged by the dead worker: it is sent again only
        # after REDISPATCH_AFTER_SECONDS, another case than this test's.)
        wait_until(
            lambda: Job.objects.filter(pk=critical.pk, state=Job.State.RUNNING).exists(),
            timeout=60, what="the critical job running in the handed-over slot",
        )  # fmt: skip
        gpu.send_signal(signal.SIGKILL)
        gpu.wait(10)
        assert paused.preemptions == 1 and paused.paused_for == "critical"

        with running_worker(queues=[settings.HOUSEKEEPING_QUEUE]):

            def requeued():
                app.send_task("lanes.tasks.reconcile_jobs")
                time.sleep(0.3)
                return Job.objects.filter(pk=background.pk, state=Job.State.QUEUED, paused_at=None).exists()

            wait_until(requeued, timeout=30, what="the paused job requeued")
        with running_worker():  # consumes housekeeping too: beat's reconcile goes on, as in a deployment

            def finished(pk: int):
                # The critical job started just before the kill: reconcile takes it for lost only once it
                # has run longer than the lost-worker window, on a later pass.
                app.send_task("lanes.tasks.reconcile_jobs")
                time.sleep(0.5)
                return Job.objects.filter(pk=pk, state__in=Job.TERMINAL).first()

            done = wait_until(lambda: finished(background.pk), timeout=240, what="the paused job finished")
            critical_done = wait_until(lambda: finished(critical.pk), timeout=240, what="the critical job finished")
            assert critical_done.state == Job.State.SUCCEEDED
            alone = wait_for_job(submit_brief(casey, **brief, priority="background").pk, timeout=240)
        assert done.state == Job.State.SUCCEEDED and done.attempts == 2 and done.lost_workers == 1
        # Rendered again from step 0 after the requeue: the same image as the seed's uninterrupted run.
        assert done.artifacts.get().sha256 == alone.artifacts.get().sha256
    finally:
        if gpu.poll() is None:
            gpu.kill()
