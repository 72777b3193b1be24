import pytest
from django.conf import settings

from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane, Verification
from lanes.review import start_verification
from lanes.tasks import verify_artifact
from tests.conftest import running_worker, wait_for_job, wait_until, waiting_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for_verification(job_id: int, count: int = 1, timeout: float = 60.0) -> list[Verification]:
    def finished() -> list[Verification] | None:
        done = list(
            Verification.objects.filter(job_id=job_id).exclude(status__in=["pending", "running"]).order_by("id")
        )
        return done if len(done) >= count else None

    return wait_until(finished, timeout, f"job {job_id}: verification not finished")


def test_verification_runs_on_its_own_queue_and_flags_unreadable_text(demo_lanes, creative):
    lane_queues = sorted({lane.queue for lane in Lane.objects.all()})
    with running_worker(queues=lane_queues):  # a GPU worker that does not consume the verify queue
        job = wait_for_job(submit_brief(creative, prompt="Poster", expected_text="GRAND OPENING", intent="draft").pk)
        assert job.state == "succeeded"
        sent = ("lanes.tasks.verify_artifact", (Verification.objects.get(job=job).pk,))
        wait_until(lambda: sent in waiting_tasks(settings.VERIFY_QUEUE), what="the verification waiting in its queue")
        assert Verification.objects.get(job=job).status == "pending"
    with running_worker(queues=[settings.VERIFY_QUEUE]):  # the CPU verifier
        (verification,) = wait_for_verification(job.pk)
    # The demo checkpoint paints noise: the text is not there.
    assert verification.status == "flagged" and verification.reason == "missing: 'GRAND OPENING' was not found"
    assert verification.lane == job.lane and verification.model_version == job.model_version
    assert verification.artifact.stage == "final" and verification.ocr_ms > 0


# At the lanes' own sizes: a 64x64 draft and a 32x32 preview hold text a few pixels tall.
@pytest.mark.parametrize(("intent", "side"), [("draft", 64), ("preview", 32)])
def test_a_lane_that_allows_it_auto_fixes_and_verifies_again(worker, creative, intent, side):
    lane = Lane.objects.get(routes__intent=intent)
    Lane.objects.filter(pk=lane.pk).update(autofix=True)
    job = wait_for_job(submit_brief(creative, prompt='Sale banner "SUMMER SALE"', intent=intent).pk)
    assert (job.lane_id, job.width, job.height) == (lane.pk, side, side)
    first, second = wait_for_verification(job.pk, count=2)
    assert first.status == "flagged" and first.decision == "fixed" and first.decided_by is None
    assert second.source == first and second.artifact.stage == Artifact.Stage.FIXED
    assert (second.artifact.width, second.artifact.height) == (side, side)
    assert second.status == "passed", second.reason
    assert second.details["scores"][0]["similarity"] == 1.0
    assert job.artifacts.filter(stage="final").exists()  # the original is kept


def test_no_expected_text_is_not_applicable_without_ocr(worker, creative):
    job = wait_for_job(submit_brief(creative, prompt="An abstract poster", intent="draft").pk)
    verification = Verification.objects.get(job=job)
    assert verification.status == "not_applicable" and verification.ocr_ms is None


def test_a_lane_that_does_not_verify_records_nothing(worker, creative):
    Lane.objects.filter(name="fast-draft").update(verify=False)
    job = wait_for_job(submit_brief(creative, prompt="Poster", expected_text="OPEN", intent="draft").pk)
    assert not Verification.objects.filter(job=job).exists()


def test_a_corrupt_image_is_a_clear_error_and_a_deleted_job_is_skipped(creative, demo_lanes, media_root):
    job = submit_brief(creative, prompt="Poster", expected_text="OPEN", intent="draft")
    path = media_root / "artifacts" / "corrupt.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    artifact = Artifact.objects.create(
        job=job, path="artifacts/corrupt.png", width=8, height=8, sha256="x", size_bytes=20
    )
    verification = start_verification(Job.objects.select_related("lane").get(pk=job.pk), artifact)
    assert verify_artifact.apply(args=(verification.pk,)).get() == "error"
    verification.refresh_from_db()
    assert verification.status == "error" and verification.reason.startswith("unreadable image:")
    assert verify_artifact.apply(args=(verification.pk,)).get() == "skipped"  # delivered twice: once

    again = start_verification(Job.objects.select_related("lane").get(pk=job.pk), artifact)
    Job.objects.filter(pk=job.pk).delete()
    assert verify_artifact.apply(args=(again.pk,)).get() == "missing"


def test_pass_rates_per_lane_and_model_version_are_computed_in_the_database(
    creative, demo_lanes, django_assert_num_queries
):
    job = submit_brief(creative, prompt="p", intent="draft")
    artifact = Artifact.objects.create(job=job, path="x.png", width=8, height=8, sha256="x", size_bytes=1)
    for status in ["passed", "passed", "passed", "flagged", "not_applicable"]:
        Verification.objects.create(
            job=job, artifact=artifact, lane=job.lane, model_version=job.model_version, status=status
        )
    with django_assert_num_queries(1):
        rates = list(Verification.objects.pass_rates())
    assert [(r["lane__name"], r["model_version__name"], r["total"], r["passed"]) for r in rates] == [
        ("fast-draft", "demo-tiny-sd-v1", 4, 3)
    ]
