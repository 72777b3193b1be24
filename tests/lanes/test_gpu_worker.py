"""`manage.py gpu_worker` exits non-zero when its worker dies of a fatal error, so a supervisor
(systemd Restart=on-failure, Kubernetes) restarts it. Here the fatal error is real: a broker that
does not answer at start, with retries at start turned off."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
