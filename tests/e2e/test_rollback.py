import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from lanes import rollout
from lanes.actions import submit_brief
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import AuditEvent, Job, Lane, ModelVersion, hash_checkpoint
from tests.conftest import make_user, running_worker, wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_admin_rolls_a_lane_back_while_a_job_runs_on_the_new_version(demo_lanes, live_server_url, page, settings):
    settings.ADMISSION_CONTROL = False
    target = Path(settings.MODELS_ROOT) / "e2e-v2"
    if not target.exists():
        shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    v2 = ModelVersion.objects.create(
        name="e2e-v2", location="e2e-v2", content_hash=hash_checkpoint(target), status="validated"
    )
    admin, creative = make_user("ada", "admin"), make_user("casey")
    rollout.activate(Lane.objects.get(name="final-render"), v2, admin)

    page.goto(f"{live_server_url}/login/?next=/lanes/final-render/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    expect(page.locator("#active-version")).to_have_text("e2e-v2")

    with running_worker():
        # A long render (192², 40 steps: seconds on this CPU) pinned to e2e-v2.
        job = submit_brief(creative, prompt="a long render", intent="final", width=192, height=192, steps=40)
        assert job.model_version == v2
        wait_for_job(job.pk, states=(Job.State.RUNNING,))
        page.once("dialog", lambda dialog: dialog.accept())  # the confirmation
        page.click("#rollback-form button")
        expect(page.locator("#active-version")).to_have_text("demo-tiny-sd-v1")
        expect(page.locator(".flash")).to_contain_text("running jobs finish as they were")
        assert Job.objects.get(pk=job.pk).state == Job.State.RUNNING  # still rendering on e2e-v2
        after = submit_brief(creative, prompt="after the rollback", intent="final")
        done = wait_for_job(job.pk)
        wait_for_job(after.pk)
    assert done.state == Job.State.SUCCEEDED and done.model_version == v2
    assert Job.objects.get(pk=after.pk).model_version.name == "demo-tiny-sd-v1"
    event = AuditEvent.objects.get(action="lane.rollback")
    assert (event.actor_name, event.before["active"], event.after["active"]) == ("ada", "e2e-v2", "demo-tiny-sd-v1")
    expect(page.locator("#history")).to_contain_text("rolled back")
