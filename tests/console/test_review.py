import pytest
from django.urls import reverse

from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Verification
from lanes.typeset import render

SCORES = {"scores": [{"expected": "OPEN", "read": "OPFN", "similarity": 0.75, "passed": False,
                      "box": [[10, 10], [90, 10], [90, 40], [10, 40]], "edit_distance": 0.25}],
          "lines": [{"text": "OPFN", "score": 0.9, "box": [[10, 10], [90, 10], [90, 40], [10, 40]]}]}  # fmt: skip


@pytest.fixture
def flagged(creative, demo_lanes, media_root):
    def make(owner=None, text="OPFN", lane_intent="draft") -> Verification:
        job = submit_brief(owner or creative, prompt="A sign", expected_text="OPEN", intent=lane_intent)
        path = media_root / f"artifacts/{job.pk}/final-1.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        render(text, size=(256, 128), font_size=40).save(path)
        artifact = Artifact.objects.create(job=job, path=f"artifacts/{job.pk}/final-1.png", width=256, height=128,
                                           sha256="x", size_bytes=path.stat().st_size)  # fmt: skip
        return Verification.objects.create(
            job=job, artifact=artifact, lane=job.lane, model_version=job.model_version, expected=["OPEN"],
            status="flagged", reason="mismatch: expected 'OPEN', read 'OPFN' (similarity 0.75)", details=SCORES,
        )  # fmt: skip

    return make


def test_anonymous_goes_to_login(client, db):
    assert client.get(reverse("review")).status_code == 302


def test_a_creative_sees_their_flagged_images_with_expected_read_and_boxes(creative_client, flagged, other_creative):
    mine, theirs = flagged(), flagged(owner=other_creative)
    page = creative_client.get(reverse("review"))
    assert page.status_code == 200
    assert f'id="review-{mine.pk}"' in page.text and f'id="review-{theirs.pk}"' not in page.text
    assert "<q>OPEN</q>" in page.text and "<q>OPFN</q>" in page.text
    assert 'class="ocr-box" style="left:3.91%;top:7.81%;width:31.25%;height:23.44%"' in page.text


def test_filters_narrow_the_queue(creative_client, flagged):
    item = flagged()
    assert (
        f"review-{item.pk}" in creative_client.get(reverse("review") + "?lane=fast-draft&reason=mismatch&age=1h").text
    )
    assert f"review-{item.pk}" not in creative_client.get(reverse("review") + "?lane=preview").text
    assert f"review-{item.pk}" not in creative_client.get(reverse("review") + "?reason=missing").text


def test_approve_and_reject_record_who_and_when_once(creative_client, creative, flagged):
    first, second = flagged(), flagged()
    response = creative_client.post(
        reverse("review-action", args=[first.pk, "approve"]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200 and "approved" in response.text
    first.refresh_from_db()
    assert (first.decision, first.decided_by) == ("approved", creative) and first.decided_at
    again = creative_client.post(reverse("review-action", args=[first.pk, "reject"]), headers={"HX-Request": "true"})
    assert again.status_code == 409 and "already reviewed (approved)" in again.text
    creative_client.post(reverse("review-action", args=[second.pk, "reject"]))
    second.refresh_from_db()
    assert second.decision == "rejected"
    assert f"review-{first.pk}" not in creative_client.get(reverse("review")).text


def test_another_teams_creative_gets_404_and_changes_nothing(client, other_creative, flagged):
    item = flagged()
    client.force_login(other_creative)
    for action in ("approve", "reject", "autofix", "rerender"):
        assert client.post(reverse("review-action", args=[item.pk, action])).status_code == 404
    client.post(reverse("review-bulk"), {"action": "approve", "ids": [item.pk]})
    item.refresh_from_db()
    assert item.decision == ""


def test_auto_fix_overlays_the_text_as_a_new_artifact_and_verifies_it(creative_client, flagged):
    item = flagged()
    creative_client.post(reverse("review-action", args=[item.pk, "autofix"]))
    item.refresh_from_db()
    assert item.decision == "fixed"
    fixed = item.job.artifacts.get(stage="fixed")
    assert fixed.absolute_path.is_file() and item.job.artifacts.filter(stage="final").exists()
    followup = Verification.objects.get(source=item)
    assert followup.artifact == fixed and followup.status == "pending"  # the verify queue takes it from here


def test_re_render_creates_a_linked_job_with_a_new_seed_on_the_chosen_lane(creative_client, flagged):
    item = flagged()
    creative_client.post(reverse("review-action", args=[item.pk, "rerender"]), {"intent": "final"})
    new = Job.objects.get(rerender_of=item.job)
    assert new.lane.name == "final-render" and new.expected_text == "OPEN" and new.prompt == item.job.prompt
    item.refresh_from_db()
    assert item.decision == "rerendered"


def test_bulk_actions_apply_to_every_selected_image(creative_client, flagged):
    items = [flagged() for _ in range(3)]
    response = creative_client.post(
        reverse("review-bulk"), {"action": "reject", "ids": [i.pk for i in items[:2]]}, follow=True
    )
    assert "reject: 2 images." in response.text
    assert [Verification.objects.get(pk=i.pk).decision for i in items] == ["rejected", "rejected", ""]


def test_the_queue_page_query_count_does_not_grow_with_items(creative_client, flagged):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert creative_client.get(reverse("review")).status_code == 200
        return len(ctx)

    flagged()
    few = count()
    for _ in range(6):
        flagged()
    assert count() == few


def test_a_re_rendered_job_and_its_original_link_to_each_other(creative_client, flagged):
    item = flagged()
    creative_client.post(reverse("review-action", args=[item.pk, "rerender"]), {"intent": "final"})
    new = Job.objects.get(rerender_of=item.job)
    original = creative_client.get(reverse("job-detail", args=[item.job_id])).text
    assert f're-rendered by casey as <a href="{reverse("job-detail", args=[new.pk])}">job {new.pk}</a>' in original
    assert "just now" in original and "0 minutes" not in original
    again = creative_client.get(reverse("job-detail", args=[new.pk])).text
    assert f'<a href="{reverse("job-detail", args=[item.job_id])}">job {item.job_id}</a>' in again
