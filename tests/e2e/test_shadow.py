import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from lanes.actions import submit_brief
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import Job, ModelVersion, Shadow, hash_checkpoint
from tests.conftest import make_user, running_worker, wait_for_job, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_admin_shadows_a_version_and_watches_the_pairs_arrive_side_by_side(
    demo_lanes, live_server_url, page, settings
):
    target = Path(settings.MODELS_ROOT) / "e2e-shadow"
    if not target.exists():
        shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    ModelVersion.objects.create(
        name="e2e-shadow", location="e2e-shadow", content_hash=hash_checkpoint(target), status="validated"
    )
    make_user("ada", "admin")
    creative = make_user("casey")

    page.goto(f"{live_server_url}/login/?next=/lanes/fast-draft/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    page.select_option("#shadow-form select[name=version]", "e2e-shadow")
    page.fill("#shadow-form input[name=percent]", "100")
    page.click("#shadow-form button[type=submit]")
    expect(page.locator("#shadow-state")).to_contain_text("e2e-shadow shadows 100% of the briefs")
    page.click("text=Compare side by side")
    expect(page.locator("#shadow-counts")).to_have_text("0 finished pairs of 0")

    with running_worker():
        jobs = [submit_brief(creative, prompt="a poster saying SALE", intent="draft", seed=s) for s in (5, 6)]
        for job in jobs:
            wait_for_job(job.pk)
        run = Shadow.objects.get()
        copies = wait_until(lambda: len(c := list(Job.objects.filter(shadow_run=run))) == 2 and c, timeout=60)
        for copy in copies:
            wait_for_job(copy.pk)
        # No reload: the pairs section refreshes itself.
        expect(page.locator("#shadow-counts")).to_have_text("2 finished pairs of 2", timeout=20_000)
    for copy in copies:
        row = page.locator(f'tr[data-pair="{copy.pk}"]')
        for side in ("production", "shadow"):
            image = row.locator(f'img[alt^="{side},"]')
            expect(image).to_be_visible()
            assert image.evaluate("img => img.complete && img.naturalWidth") == 64
