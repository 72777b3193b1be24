import pytest
from playwright.sync_api import expect

from lanes.actions import submit_brief
from lanes.models import Verification
from tests.conftest import running_worker, wait_for_job, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def verification_of(job_id: int, stage: str) -> Verification | None:
    return (
        Verification.objects.filter(job_id=job_id, artifact__stage=stage)
        .exclude(status__in=["pending", "running"])
        .first()
    )


# The lanes' own sizes: a draft is 64x64 and a preview 32x32; the demo checkpoint paints no text.
@pytest.mark.parametrize(("intent", "side"), [("draft", 64), ("preview", 32)])
def test_a_creative_auto_fixes_a_small_flagged_image_and_it_passes(
    demo_lanes, live_server_url, page, creative, intent, side
):
    with running_worker():
        job = wait_for_job(submit_brief(creative, prompt='Sale banner "SUMMER SALE"', intent=intent).pk, timeout=120)
        assert job.state == "succeeded", job.error
        flagged = wait_until(lambda: verification_of(job.pk, "final"), 120, "the first text check")
        assert flagged.status == "flagged" and (job.width, job.height) == (side, side)

        page.goto(f"{live_server_url}/login/")
        page.fill("input[name=username]", "casey")
        page.fill("input[name=password]", "casey-password-1")
        page.click("button[type=submit]")
        page.goto(f"{live_server_url}/review/")
        card = page.locator(f"#review-{flagged.pk}")
        expect(card).to_contain_text("missing: 'SUMMER SALE' was not found")
        card.get_by_role("button", name="Auto-fix").click()
        expect(card).to_contain_text("text overlaid; verifying the fixed image")

        fixed = wait_until(lambda: verification_of(job.pk, "fixed"), 120, "the fixed image's text check")
        assert fixed.status == "passed", fixed.reason

    page.goto(f"{live_server_url}/jobs/{job.pk}/")
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("Passed (fixed)")
    expect(facts).to_contain_text("Flagged (final) — missing: 'SUMMER SALE' was not found; auto-fixed by casey")
    natural = page.evaluate(
        "src => new Promise(done => { const i = new Image(); i.onload = () => done([i.naturalWidth, i.naturalHeight]);"
        " i.src = src; })",
        f"/jobs/{job.pk}/fixed.png",
    )
    assert natural == [side, side]
    page.goto(f"{live_server_url}/review/")
    expect(page.locator(f"#review-{flagged.pk}")).to_have_count(0)
