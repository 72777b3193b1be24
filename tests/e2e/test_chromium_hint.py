"""Without Chromium the browser tests are skipped locally, and the run's summary says how to get it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


DROPPED = ("CI", "LANEWAY_CHROMIUM", "LANEWAY_VAR_DIR", "DATABASE_URL", "REDIS_URL", "TEST_DATABASE_NAME")


def test_a_run_without_chromium_ends_with_how_to_install_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    # No chromium on PATH; the embedded default in a var/ of its own, so this run's test database
    # (SQLite or, in the PostgreSQL pass, the outer run's PostgreSQL one) is never the outer run's.
    env.update(PATH=str(tmp_path), LANEWAY_VAR_DIR=str(tmp_path / "var"))
    node = "tests/e2e/test_security.py::test_a_retire_still_asks_first_without_inline_script"
    # --no-migrations: its test database straight from the models (seconds); the test is skipped anyway.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider", "--no-migrations"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "1 browser tests skipped: no Chromium — install it with `sudo apt-get install -y chromium` "
        "(or set LANEWAY_CHROMIUM to its path)" in result.stdout
    ), result.stdout
