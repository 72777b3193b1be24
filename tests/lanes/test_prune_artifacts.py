from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import transaction

from console.celery import app
from experiments.models import Arm, Experiment, ExperimentCell
from lanes import retention
from lanes.models import Artifact, Job, ModelVersion, Verification
from lanes.signals import retention_holds
from lanes.tasks import prune_artifacts
from tests.conftest import running_worker, wait_until
from tests.lanes.finished import finished_job


def image_of(job: Job) -> Artifact:
    return Artifact.objects.get(job=job, stage=Artifact.Stage.FINAL)


def verification(job: Job, status: str, decision: str = "") -> Verification:
    return Verification.objects.create(
        job=job, artifact=image_of(job), lane=job.lane, model_version=job.model_version, status=status,
        decision=decision,
    )  # fmt: skip


@pytest.fixture
def fleet(creative, demo_lanes, media_root):
    """Old and new jobs of every kind retention tells apart, each with its PNG on disk."""
    old = {name: finished_job(creative, days_old=40, seed=seed) for seed, name in enumerate(
        ["plain", "passed", "flagged", "approved", "checking", "experiment", "smoke", "rejected_brief"], start=1
    )}  # fmt: skip
    verification(old["passed"], Verification.Status.PASSED)
    verification(old["flagged"], Verification.Status.FLAGGED)
    verification(old["approved"], Verification.Status.FLAGGED, Verification.Decision.APPROVED)
    verification(old["checking"], Verification.Status.PENDING)
    experiment = Experiment.objects.create(name="posters", created_by=creative, prompts=[], seeds=[1])
    arm = Arm.objects.create(experiment=experiment, name="a", lane=old["experiment"].lane,
                             model_version=old["experiment"].model_version)  # fmt: skip
    ExperimentCell.objects.create(experiment=experiment, arm=arm, prompt_index=0, sample_index=0, seed=1,
                                  job=old["experiment"])  # fmt: skip
    # A cell not submitted yet (no job) must not keep everything else (SQL's NOT IN with a NULL).
    ExperimentCell.objects.create(experiment=experiment, arm=arm, prompt_index=1, sample_index=0, seed=1)
    ModelVersion.objects.filter(pk=old["smoke"].model_version_id).update(smoke_image=image_of(old["smoke"]).path)
    running = old.pop("rejected_brief")
    Job.objects.filter(pk=running.pk).update(state=Job.State.RUNNING, finished_at=None)
    return {**old, "running": running, "recent": finished_job(creative, days_old=10, seed=20)}


def files(jobs: dict) -> dict[str, bool]:
    return {name: image_of(job).absolute_path.is_file() for name, job in jobs.items()}


def test_retention_deletes_old_images_but_keeps_experiments_reviews_smoke_images_and_unfinished_jobs(
    fleet, settings, django_capture_on_commit_callbacks
):
    settings.ARTIFACT_RETENTION_DAYS = 30
    assert all(files(fleet).values())
    with django_capture_on_commit_callbacks(execute=True):
        result = prune_artifacts()

    assert result == {
        "artifacts": 2,
        "jobs": 2,
        "bytes": sum(image_of(fleet[n]).size_bytes for n in ("plain", "passed")),
    }
    gone = {"plain", "passed"}
    assert files(fleet) == {name: name not in gone for name in fleet}
    for name, job in fleet.items():
        assert (image_of(job).pruned_at is not None) == (name in gone), name
    # The rows stay: a passed check still counts in its lane's pass rate.
    assert Verification.objects.filter(job=fleet["passed"], status="passed").exists()
    assert Job.objects.get(pk=fleet["plain"].pk).state == Job.State.SUCCEEDED
    assert not (Path(settings.MEDIA_ROOT) / "artifacts" / str(fleet["plain"].pk)).exists()  # its empty folder too

    with django_capture_on_commit_callbacks(execute=True):
        assert prune_artifacts() == {"artifacts": 0, "jobs": 0, "bytes": 0}  # safe to run twice


def test_retention_zero_keeps_everything(fleet, settings, django_capture_on_commit_callbacks):
    settings.ARTIFACT_RETENTION_DAYS = 0
    with django_capture_on_commit_callbacks(execute=True):
        assert prune_artifacts() == {"artifacts": 0, "jobs": 0, "bytes": 0}
    assert all(files(fleet).values())
    assert not Artifact.objects.filter(pruned_at__isnull=False).exists()


def test_files_are_deleted_only_after_each_batch_commits(
    creative, demo_lanes, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(retention, "BATCH", 2)
    jobs = [finished_job(creative, days_old=5, seed=seed) for seed in range(5)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        pruned = retention.prune(days=3)
    assert pruned.artifacts == 5 and len(callbacks) == 3  # batches of 2, 2 and 1
    assert Artifact.objects.filter(pruned_at__isnull=False).count() == 5
    assert all(image_of(job).absolute_path.is_file() for job in jobs)  # not yet committed: files untouched
    for callback in callbacks:
        callback()
    assert not any(image_of(job).absolute_path.is_file() for job in jobs)


def test_a_rolled_back_batch_deletes_no_file(creative, demo_lanes):
    job = finished_job(creative, days_old=5)
    with pytest.raises(RuntimeError), transaction.atomic():
        retention.prune(days=3)
        raise RuntimeError("the transaction around it fails")
    assert image_of(job).pruned_at is None and image_of(job).absolute_path.is_file()


def test_a_hold_that_fails_stops_the_pruning(creative, demo_lanes, django_capture_on_commit_callbacks):
    job = finished_job(creative, days_old=5)

    def broken(**kwargs):
        raise RuntimeError("cannot tell what to keep")

    retention_holds.connect(broken, dispatch_uid="test-broken-hold")
    try:
        with pytest.raises(RuntimeError), django_capture_on_commit_callbacks(execute=True):
            retention.prune(days=3)
    finally:
        retention_holds.disconnect(dispatch_uid="test-broken-hold")
    assert image_of(job).pruned_at is None and image_of(job).absolute_path.is_file()


def test_the_command_dry_run_counts_and_deletes_nothing(fleet, settings, django_capture_on_commit_callbacks):
    settings.ARTIFACT_RETENTION_DAYS = 0
    out = call_command_output("prune_artifacts")
    assert "Retention is off (ARTIFACT_RETENTION_DAYS=0): nothing pruned" in out

    out = call_command_output("prune_artifacts", "--days", "30", "--dry-run")
    assert "Would prune 2 images of 2 jobs older than 30 days" in out
    assert all(files(fleet).values()) and not Artifact.objects.filter(pruned_at__isnull=False).exists()

    with django_capture_on_commit_callbacks(execute=True):
        out = call_command_output("prune_artifacts", "--days", "5")
    assert "Pruned 3 images of 3 jobs older than 5 days" in out  # the recent one (10 days) too
    assert not files(fleet)["recent"] and files(fleet)["flagged"]

    with pytest.raises(CommandError, match="--days must be at least 1"):
        call_command("prune_artifacts", "--days", "0")


def call_command_output(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_beat_sends_the_task_to_the_housekeeping_queue():
    assert settings.CELERY_TASK_ROUTES["lanes.tasks.prune_artifacts"] == {"queue": settings.HOUSEKEEPING_QUEUE}
    assert any(entry["task"] == "lanes.tasks.prune_artifacts" for entry in settings.CELERY_BEAT_SCHEDULE.values())


@pytest.mark.django_db(transaction=True)
def test_a_housekeeping_worker_prunes(creative, demo_lanes, settings):
    settings.ARTIFACT_RETENTION_DAYS = 30
    job = finished_job(creative, days_old=31)
    with running_worker(queues=[settings.HOUSEKEEPING_QUEUE]):
        app.send_task("lanes.tasks.prune_artifacts")
        wait_until(lambda: not image_of(job).absolute_path.is_file(), what="the old image deleted")
    assert image_of(job).pruned_at is not None
