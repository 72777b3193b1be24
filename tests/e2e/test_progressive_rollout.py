"""Browser test: an admin saves a plan and starts a rollout on the lane page, then watches it advance
and be promoted without reloading the page.

Honest about the traffic: the jobs beat's analysis reads are created as finished rows (both arms, run
times and GPU seconds alike), not rendered on a worker; beat's check (`progressive.check_rollouts`) is
called directly by the test. Everything between is real: the page, the websocket push each transition
sends, and the htmx re-read of the rollout panel it triggers.
"""

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from lanes import progressive
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import Job, Lane, ModelVersion, Rollout, hash_checkpoint
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

PLAN = "steps:\n- {percent: 10, min_samples: 3}\n- {percent: 30, min_samples: 3}\nthresholds: {max_p95_ratio: 1.5}\n"


def finished_rows(owner, version: ModelVersion, n: int) -> None:
    lane = Lane.objects.get(name="fast-draft")
    now = timezone.now()
    for i in range(n):
        Job.objects.create(
            owner=owner, prompt="p", intent="draft", lane=lane, model_version=version, seed=i, width=64, height=64,
            steps=4, guidance=7.5, state=Job.State.SUCCEEDED, started_at=now - timedelta(seconds=0.5),
            finished_at=now, run_seconds=0.5, gpu_seconds=0.5,
        )  # fmt: skip


def test_an_admin_starts_a_rollout_and_watches_it_advance_and_promote_live(demo_lanes, live_server_url, page, settings):
    target = Path(settings.MODELS_ROOT) / "e2e-rollout-v2"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    v2 = ModelVersion.objects.create(
        name="e2e-rollout-v2", location="e2e-rollout-v2", content_hash=hash_checkpoint(target), status="validated"
    )
    make_user("ada", "admin")
    creative = make_user("casey")
    v1 = Lane.objects.get(name="fast-draft").active_version

    page.goto(f"{live_server_url}/login/?next=/lanes/fast-draft/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    page.fill("#rollout-plan-form textarea[name=plan]", "steps:\n- {percent: 30, min_samples: 3}\n- {percent: 10}\n")
    page.click("#rollout-plan-form button")
    expect(page.locator("#rollout-plan-form .error")).to_contain_text(["line 3: step 2: percentages must increase"])
    page.fill("#rollout-plan-form textarea[name=plan]", PLAN)
    page.click("#rollout-plan-form button")
    expect(page.locator("#rollout-plan")).to_contain_text("10 % for 3 jobs → 30 % for 3 jobs → 100 %")
    page.select_option("#rollout-start-form select[name=version]", "e2e-rollout-v2")
    page.click("#rollout-start-form button")
    expect(page.locator("#rollout-percent")).to_contain_text("step 1 of 2: 10 %")
    expect(page.locator("#live-status")).to_have_text("live")
    # A marker the page keeps only if it is never reloaded: what follows arrives over the websocket.
    page.evaluate("window.notReloaded = true")

    finished_rows(creative, v2, 2)
    finished_rows(creative, v1, 5)
    assert progressive.check_rollouts()["fast-draft"].startswith("wait")
    expect(page.locator("#metric-max_p95_ratio")).to_have_attribute("data-status", "waiting")
    expect(page.locator("#rollout-percent")).to_contain_text("step 1 of 2: 10 %")

    finished_rows(creative, v2, 2)
    assert progressive.check_rollouts()["fast-draft"].startswith("advanced")
    expect(page.locator("#rollout-percent")).to_contain_text("step 2 of 2: 30 %")
    expect(page.locator("#rollout-steps li").first).to_have_attribute("data-where", "done")

    finished_rows(creative, v2, 3)
    finished_rows(creative, v1, 3)
    assert progressive.check_rollouts()["fast-draft"].startswith("promoted")
    expect(page.locator("#rollout-state")).to_have_text("promoted")
    assert page.evaluate("window.notReloaded") is True
    assert Rollout.objects.get(lane__name="fast-draft").state == Rollout.State.PROMOTED
    assert Lane.objects.get(name="fast-draft").active_version == v2
