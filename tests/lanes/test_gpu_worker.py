"""`manage.py gpu_worker` exits non-zero when its worker dies of a fatal error, so a supervisor
(systemd Restart=on-failure, Kubernetes) restarts it. Here the fatal error is real: a broker that
does not answer at start, with retries at start turned off."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lanes.models import Lane, ModelVersion

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def test_a_worker_that_dies_of_a_fatal_error_exits_non_zero(demo_lanes):
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "LANEWAY_USE_TEST_DATABASE": "1",
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0", "BROKER_RETRY_ON_STARTUP": "false",
    }  # fmt: skip
    run = subprocess.run(
        [sys.executable, "manage.py", "gpu_worker", "--concurrency", "1", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0, run.stderr[-2000:]
    assert "CRITICAL" in run.stderr


@pytest.fixture
def worker_start(monkeypatch):
    """The Celery worker the command hands over to, recording what was loaded when it would have started."""
    from lanes import engines
    from lanes.management.commands import gpu_worker

    cache = engines.EngineCache(budget_bytes=None)
    monkeypatch.setattr(engines, "engine_cache", cache)
    started: list[dict] = []

    def main(args, standalone_mode):
        started.append({"argv": args, "loaded": [key[0] for key in cache.loaded()]})
        return 0

    monkeypatch.setattr(gpu_worker.celery_cli, "main", main)
    return started


def test_warm_loads_the_served_lanes_pipelines_before_the_worker_consumes(demo_lanes, worker_start):
    from django.core.management import call_command

    lane = Lane.objects.get(name="fast-draft")
    out = io.StringIO()
    call_command("gpu_worker", "--warm", "--lanes", "fast-draft", stdout=out)
    (start,) = worker_start
    assert start["loaded"] == [lane.active_version_id]
    assert f"Warmed {lane.active_version.name} in " in out.getvalue()
    assert any(arg.startswith("--queues=") and lane.queue in arg for arg in start["argv"])


def test_without_warm_nothing_loads_at_start(demo_lanes, worker_start):
    from django.core.management import call_command

    call_command("gpu_worker", "--lanes", "fast-draft", stdout=io.StringIO())
    assert worker_start[0]["loaded"] == []


def test_a_version_that_cannot_load_is_reported_and_the_worker_still_starts(demo_lanes, worker_start, settings):
    from django.core.management import call_command

    broken = Path(settings.MODELS_ROOT) / "broken-warm"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["x"]}))
    version = ModelVersion.objects.create(name="broken-v1", location="broken-warm", content_hash="broken")
    Lane.objects.filter(name="fast-draft").update(active_version=version)
    err = io.StringIO()
    call_command("gpu_worker", "--warm", "--lanes", "fast-draft", stdout=io.StringIO(), stderr=err)
    assert "Could not warm broken-v1:" in err.getvalue()
    assert worker_start and worker_start[0]["loaded"] == []
