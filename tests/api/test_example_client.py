"""examples/submit_and_wait.py against a real server and worker: briefs from a CSV become PNGs on disk."""

import subprocess
import sys
from pathlib import Path

from accounts.models import ApiToken
from tests.conftest import make_user
from tests.e2e.conftest import live_server_url  # noqa: F401  (a fixture: uvicorn in a thread)

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_client_submits_waits_and_downloads(live_server_url, worker, tmp_path):  # noqa: F811
    _, secret = ApiToken.issue(make_user("casey"), "example")
    briefs = tmp_path / "briefs.csv"
    briefs.write_text('prompt,intent,expected_text,seed\n"a red poster",draft,SALE,1\n"a blue poster",preview,,2\n')
    out = tmp_path / "images"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "submit_and_wait.py"), str(briefs),
         "--url", live_server_url, "--token", secret, "--out", str(out), "--poll", "0.2"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    saved = sorted(p.name for p in out.iterdir())
    assert len(saved) >= 2 and all(name.endswith(".png") for name in saved)
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in saved)
    assert "2 succeeded, 0 did not" in run.stdout
    # Run again: the Idempotency-Keys return the same jobs instead of submitting twice.
    again = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "submit_and_wait.py"), str(briefs),
         "--url", live_server_url, "--token", secret, "--out", str(out), "--poll", "0.2"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert again.returncode == 0 and sorted(p.name for p in out.iterdir()) == saved
