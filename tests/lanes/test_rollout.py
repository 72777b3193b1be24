from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from lanes import canary as canary_judge
from lanes import registry, rollout
from lanes.actions import submit_brief
from lanes.changes import ConflictError, ControlError
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import Artifact, AuditEvent, Job, Lane, LaneRelease, ModelVersion, Verification, hash_checkpoint
from tests.conftest import copy_checkpoint, make_user, running_worker, validated_copy, wait_for_job, wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


@pytest.fixture
def v2(demo_lanes):
    return validated_copy("rollout-v2")


def lane(name="fast-draft") -> Lane:
    return Lane.objects.select_related("active_version", "canary_version").get(name=name)


# Registration and validation


@pytest.mark.django_db(transaction=True)
def test_a_good_checkpoint_is_hashed_then_validated_on_a_worker_with_a_smoke_image(demo_lanes, admin, media_root):
    location = copy_checkpoint("registered-good")
    version = registry.register_version(admin, name="registered-good", location=location)
    assert version.status == ModelVersion.Status.STAGED
    assert ModelVersion.objects.get(pk=version.pk).content_hash == ""  # the worker hashes it
    with running_worker():
        deadline = timezone.now() + timedelta(seconds=60)
        while ModelVersion.objects.get(pk=version.pk).status != ModelVersion.Status.VALIDATED:
            assert timezone.now() < deadline, ModelVersion.objects.get(pk=version.pk).validation_error
    version.refresh_from_db()
    assert version.validation_error == "" and version.smoke_seconds > 0 and version.validated_on
    assert version.content_hash == hash_checkpoint(Path(settings.MODELS_ROOT) / location)
    size = sum(f.stat().st_size for f in (Path(settings.MODELS_ROOT) / location).rglob("*") if f.is_file())
    assert version.hash_bytes_done == version.hash_bytes_total == size
    hashed = AuditEvent.objects.get(action="version.hashed", model_version=version)
    assert hashed.after == {"content_hash": version.content_hash} and hashed.actor is None
    smoke = Path(settings.MEDIA_ROOT) / version.smoke_image
    from PIL import Image

    with Image.open(smoke) as image:
        assert image.size == (registry.SMOKE_SIZE, registry.SMOKE_SIZE)
    assert AuditEvent.objects.filter(action="version.register", model_version=version, actor=admin).exists()


def test_a_corrupt_checkpoint_fails_validation_with_the_loader_error_and_cannot_serve(demo_lanes, admin):
    location = copy_checkpoint("registered-corrupt")
    weights = next((Path(settings.MODELS_ROOT) / location / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated mid-tensor
    version = registry.register_version(admin, name="registered-corrupt", location=location, validate=False)
    assert registry.run_validation(version, "test") is False
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    assert "could not be loaded" in version.validation_error and version.smoke_image == ""
    with pytest.raises(ControlError, match="failed validation"):
        rollout.activate(lane(), version, admin)
    with pytest.raises(ControlError, match="failed validation"):
        rollout.start_canary(lane(), version, 10, admin)


def test_registration_refuses_bad_input_and_stores_nothing(demo_lanes, admin):
    seeded = ModelVersion.objects.count()
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, name="bad name!", location="../etc")
    assert set(exc.value.errors) == {"name", "location"}
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, name="demo-tiny-sd-v1", location=DEMO_CHECKPOINT)
    assert "already registered" in exc.value.errors["name"]
    assert ModelVersion.objects.count() == seeded  # the demo versions only
    assert not AuditEvent.objects.filter(action="version.register").exists()


def test_files_changed_after_the_first_hashing_fail_the_next_validation(demo_lanes, admin):
    location = copy_checkpoint("registered-changed")
    folder = Path(settings.MODELS_ROOT) / location
    weights = next((folder / "unet").glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])  # truncated: the first validation hashes it, then fails to load it
    version = registry.register_version(admin, name="registered-changed", location=location, validate=False)
    assert registry.run_validation(version, "test") is False
    version.refresh_from_db()
    truncated_hash = hash_checkpoint(folder)
    assert version.content_hash == truncated_hash and "could not be loaded" in version.validation_error

    weights.write_bytes(good)  # the files change between that hashing and the next validation
    registry.request_validation(version, admin)
    assert registry.run_validation(version, "test") is False
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    assert "changed since they were first hashed" in version.validation_error
    assert version.content_hash == truncated_hash  # the recorded hash stands; nothing re-records it
    assert AuditEvent.objects.filter(action="version.hashed", model_version=version).count() == 1
    with pytest.raises(ControlError, match="failed validation"):
        rollout.activate(lane(), version, admin)


# Canary and rollout


def test_a_canary_takes_its_share_of_1000_routed_jobs_and_each_job_keeps_its_version(v2, creative, settings):
    settings.ADMISSION_CONTROL = False  # routing alone: no deferrals from the queue this builds
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 20, None)
    rollout.rng.seed(1234)
    jobs = [submit_brief(creative, prompt=f"poster {i}", intent="draft") for i in range(1000)]
    on_canary = sum(1 for job in jobs if job.model_version_id == v2.pk)
    assert 170 <= on_canary <= 230  # 20% ± 3 percentage points
    assert {job.model_version_id for job in jobs} == {v1.pk, v2.pk}
    rollout.promote(lane(), None)
    assert Job.objects.filter(model_version=v1).count() == 1000 - on_canary  # pinned, not rewritten
    assert submit_brief(creative, prompt="after", intent="draft").model_version == v2


def test_rollback_restores_the_previous_version_atomically_and_is_audited(v2, admin, creative, settings):
    settings.ADMISSION_CONTROL = False
    v1 = lane().active_version
    rollout.activate(lane(), v2, admin)
    in_flight = submit_brief(creative, prompt="before rollback", intent="draft")
    assert in_flight.model_version == v2
    assert in_flight.mark_running("vm:1", None, "cpu")
    revision = lane().revision
    rollout.rollback(lane(), admin, revision)
    restored = lane()
    assert restored.active_version == v1 and restored.revision == revision + 1
    assert Job.objects.get(pk=in_flight.pk).model_version == v2  # running: finishes on its pinned version
    assert submit_brief(creative, prompt="after rollback", intent="draft").model_version == v1
    event = AuditEvent.objects.get(action="lane.rollback")
    assert (event.actor, event.lane, event.before["active"], event.after["active"]) == (
        admin, restored, v2.name, v1.name,
    )  # fmt: skip
    history = list(LaneRelease.objects.filter(lane=restored).order_by("started_at", "id").values_list(
        "version__name", "outcome"
    ))  # fmt: skip
    assert history == [(v1.name, "superseded"), (v2.name, "rolled_back"), (v1.name, "serving")]
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.VALIDATED  # serves nowhere now
    # v2 was rolled back from, and v1 serves: nothing earlier to go back to.
    with pytest.raises(ControlError, match="no previous version"):
        rollout.rollback(lane(), admin)


def test_a_rollback_that_fails_half_way_changes_nothing(v2, admin, monkeypatch):
    rollout.activate(lane(), v2, admin)
    before = (lane().active_version_id, lane().revision, list(LaneRelease.objects.values_list("id", "outcome")))

    def broken(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(AuditEvent, "record", broken)
    with pytest.raises(RuntimeError):
        rollout.rollback(lane(), admin)
    assert (lane().active_version_id, lane().revision, list(LaneRelease.objects.values_list("id", "outcome"))) == before


def test_bad_rollout_requests_get_clear_errors_and_change_nothing(v2, admin):
    staged = ModelVersion.objects.create(name="staged-one", location=DEMO_CHECKPOINT)
    revision = lane().revision
    with pytest.raises(ControlError, match="has not been validated"):
        rollout.activate(lane(), staged, admin)
    with pytest.raises(ControlError, match="no previous version"):
        rollout.rollback(lane(), admin)
    with pytest.raises(ControlError, match="between 1 and 99"):
        rollout.start_canary(lane(), v2, 100, admin)
    with pytest.raises(ControlError, match="no canary"):
        rollout.promote(lane(), admin)
    with pytest.raises(ConflictError, match="after you loaded it"):
        rollout.activate(lane(), v2, admin, expected_revision=revision - 1)
    assert lane().revision == revision and lane().active_version.name == "demo-tiny-sd-v1"
    assert not AuditEvent.objects.exists()


def test_a_serving_version_cannot_be_retired(v2, admin):
    with pytest.raises(ControlError, match="still serves lane"):
        registry.retire_version(lane().active_version, admin)
    registry.retire_version(v2, admin)
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.RETIRED
    with pytest.raises(ControlError, match="retired"):
        rollout.start_canary(lane(), v2, 10, admin)


# Automatic rollback


def finished_jobs(creative, version, n, *, failed=0, run_s=0.5, flagged=None, routed=True):
    """n finished jobs on fast-draft pinned to `version`; `flagged` of them verified and flagged.

    `routed=False`: sent to the lane and version by name, as an experiment's arm sends them."""
    target = lane()
    now = timezone.now()
    jobs = []
    for i in range(n):
        job = Job.objects.create(
            owner=creative, prompt="p", intent="draft", lane=target, model_version=version, seed=i, width=64,
            height=64, steps=4, guidance=7.5, state=Job.State.FAILED if i < failed else Job.State.SUCCEEDED,
            started_at=now - timedelta(seconds=run_s), finished_at=now, run_seconds=run_s, routed=routed,
        )  # fmt: skip
        jobs.append(job)
    if flagged is not None:
        for i, job in enumerate(jobs):
            artifact = Artifact.objects.create(job=job, path="x.png", width=64, height=64, sha256="0", size_bytes=1)
            Verification.objects.create(
                job=job, artifact=artifact, lane=target, model_version=version, expected=["SALE"],
                status=Verification.Status.FLAGGED if i < flagged else Verification.Status.PASSED,
            )  # fmt: skip
    return jobs


@pytest.mark.parametrize(
    "canary, baseline, reason",
    [
        (dict(failed=6), dict(failed=0), "error rate 30.0% vs 0.0%"),
        (dict(run_s=2.0), dict(run_s=0.5), "p95 run time 2000 ms vs 500 ms"),
        (dict(flagged=12), dict(flagged=1), "verification flag rate 60.0% vs 5.0%"),
    ],
)
def test_a_regressing_canary_is_rolled_back_by_beat_with_its_numbers(
    v2, creative, ops_client, canary, baseline, reason
):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 50, None)
    Lane.objects.filter(name="fast-draft").update(canary_min_samples=20)
    finished_jobs(creative, v2, 20, **canary)
    finished_jobs(creative, v1, 20, **baseline)
    outcome = canary_judge.check_canaries()
    assert outcome["fast-draft"].startswith("rolled back") and reason in outcome["fast-draft"]
    after = lane()
    assert after.canary_version is None and after.active_version == v1 and reason in after.notice
    event = AuditEvent.objects.get(action="canary.auto-rollback")
    assert event.actor is None and event.actor_name == "laneway" and reason in event.note
    assert event.before["canary"] == v2.name and event.after["canary"] is None
    page = ops_client.get("/jobs/")
    assert "rolled back automatically" in page.text and reason in page.text  # the banner


def test_noise_below_the_minimum_sample_count_does_not_roll_back(v2, creative):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 50, None)
    Lane.objects.filter(name="fast-draft").update(canary_min_samples=20)
    finished_jobs(creative, v2, 5, failed=3, run_s=3.0)  # terrible, but only 5 jobs
    finished_jobs(creative, v1, 40)
    outcome = canary_judge.check_canaries()
    assert outcome["fast-draft"].startswith("kept") and "too few finished jobs" in outcome["fast-draft"]
    assert lane().canary_version == v2 and not AuditEvent.objects.filter(action="canary.auto-rollback").exists()


def test_a_canary_within_thresholds_is_kept(v2, creative):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 50, None)
    Lane.objects.filter(name="fast-draft").update(canary_min_samples=20)
    finished_jobs(creative, v2, 30, failed=1, run_s=0.55)
    finished_jobs(creative, v1, 30, failed=1, run_s=0.5)
    assert canary_judge.check_canaries()["fast-draft"].startswith("kept")
    assert lane().canary_version == v2


@pytest.mark.django_db(transaction=True)
def test_a_job_routed_to_the_canary_runs_on_it_on_a_real_worker(v2, creative):
    rollout.start_canary(lane(), v2, 99, None)
    rollout.rng.seed(0)
    with running_worker():
        job = submit_brief(creative, prompt="a canary poster", intent="draft")
        assert job.model_version == v2
        done = wait_for_job(job.pk)
    assert done.state == Job.State.SUCCEEDED and done.model_version == v2


def test_experiment_jobs_pinned_to_the_canary_version_do_not_count_against_it(v2, creative, admin):
    from experiments.models import Arm, Experiment, ExperimentCell

    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 50, None)
    Lane.objects.filter(name="fast-draft").update(canary_min_samples=20)
    experiment = Experiment.objects.create(name="pinned", created_by=admin, prompts=[{"prompt": "p"}], seeds=[1])
    arm = Arm.objects.create(experiment=experiment, name="b", lane=lane(), model_version=v2)
    for i, job in enumerate(
        finished_jobs(creative, v2, 20, failed=20, routed=False)
    ):  # all failed, but an experiment's
        ExperimentCell.objects.create(experiment=experiment, arm=arm, prompt_index=0, sample_index=i, seed=i, job=job)
    finished_jobs(creative, v1, 20)
    assert "too few finished jobs" in canary_judge.check_canaries()["fast-draft"]
    assert lane().canary_version == v2


# Waiting work follows the version that serves: re-pinned on a stopped canary or a rollback


def waiting_on(creative, version, n, state=Job.State.QUEUED):
    return [
        Job.objects.create(
            owner=creative,
            prompt=f"waiting {i}",
            intent="draft",
            lane=lane(),
            model_version=version,
            state=state,
            seed=i,
            steps=4,
            width=64,
            height=64,
            guidance=7.5,
        )  # fmt: skip
        for i in range(n)
    ]


def test_a_rollback_moves_waiting_jobs_to_the_restored_version_and_says_so(v2, admin, creative, client):
    v1 = lane().active_version
    rollout.activate(lane(), v2, admin)
    queued = waiting_on(creative, v2, 3)
    deferred = waiting_on(creative, v2, 2, state=Job.State.DEFERRED)
    running = waiting_on(creative, v2, 1)[0]
    assert running.mark_running("vm:1", None, "cpu")
    untouched = waiting_on(creative, v1, 1)[0]

    rollout.rollback(lane(), admin)

    for job in queued + deferred:
        job.refresh_from_db()
        assert job.model_version == v1
        assert job.version_note == (
            f"Moved from {v2.name} to {v1.name} before it started: lane fast-draft was rolled back."
        )
    assert Job.objects.get(pk=running.pk).model_version == v2  # running work keeps its version
    assert Job.objects.get(pk=untouched.pk).version_note == ""
    event = AuditEvent.objects.get(action="lane.repin")
    assert event.actor == admin and event.after == {"version": v1.name, "jobs": 5}
    assert event.note.startswith(f"moved 5 waiting jobs from {v2.name} to {v1.name}")
    client.force_login(creative)
    page = client.get(f"/jobs/{queued[0].pk}/")
    assert 'id="version-note"' in page.text and f"Moved from {v2.name} to {v1.name}" in page.text
    api = client.get(f"/api/v1/jobs/{queued[0].pk}")
    assert api.status_code == 200 and api.json()["version_note"].startswith(f"Moved from {v2.name}")


def test_stopping_a_canary_by_hand_moves_its_waiting_jobs_to_the_active_version(v2, admin, creative):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 50, admin)
    on_canary = waiting_on(creative, v2, 4)
    on_active = waiting_on(creative, v1, 2)
    rollout.end_canary(lane(), admin)
    assert set(Job.objects.filter(pk__in=[j.pk for j in on_canary]).values_list("model_version", flat=True)) == {v1.pk}
    assert not Job.objects.filter(pk__in=[j.pk for j in on_active]).exclude(version_note="").exists()
    assert "the canary was stopped" in Job.objects.get(pk=on_canary[0].pk).version_note
    assert AuditEvent.objects.get(action="lane.repin").after["jobs"] == 4


def test_an_automatic_canary_rollback_moves_the_jobs_waiting_for_the_bad_version(v2, creative):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 50, None)
    Lane.objects.filter(name="fast-draft").update(canary_min_samples=20)
    finished_jobs(creative, v2, 20, failed=6)
    finished_jobs(creative, v1, 20)
    waiting = waiting_on(creative, v2, 8, state=Job.State.DEFERRED)
    assert canary_judge.check_canaries()["fast-draft"].startswith("rolled back")
    assert not Job.objects.filter(pk__in=[j.pk for j in waiting], model_version=v2).exists()
    note = Job.objects.get(pk=waiting[0].pk).version_note
    assert "rolled back automatically" in note and "error rate" in note
    event = AuditEvent.objects.get(action="lane.repin")
    assert event.actor is None and event.after["jobs"] == 8


@pytest.mark.django_db(transaction=True)
def test_a_job_moved_off_a_stopped_canary_renders_on_the_serving_version(v2, creative, admin):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 99, admin)
    rollout.rng.seed(0)
    job = submit_brief(creative, prompt="a canary poster", intent="draft")  # no worker yet: it waits
    assert job.model_version == v2
    rollout.end_canary(lane(), admin)
    with running_worker():
        done = wait_for_job(job.pk)
    assert done.state == Job.State.SUCCEEDED and done.model_version == v1
    assert Artifact.objects.filter(job=done).exists()


@pytest.mark.django_db(transaction=True)
def test_a_canary_whose_weights_will_not_load_is_stopped_at_once_and_its_briefs_succeed_on_the_active_version(
    v2, creative, admin
):
    v1 = lane().active_version
    rollout.start_canary(lane(), v2, 99, admin)
    for weights in (Path(settings.MODELS_ROOT) / v2.location).rglob("*.safetensors"):
        weights.write_bytes(b"\xff" * 64)  # corrupted on disk after validation
    rollout.rng.seed(0)
    jobs = [submit_brief(creative, prompt=f"a canary poster {i}", intent="draft") for i in range(3)]
    assert {job.model_version for job in jobs} == {v2}
    with running_worker(concurrency=1):
        done = [wait_for_job(job.pk, timeout=120) for job in jobs]
    assert [job.state for job in done] == [Job.State.SUCCEEDED] * 3  # no brief failed for the version
    assert {job.model_version for job in done} == {v1}
    notes = sorted(job.version_note.split(":")[0] for job in done)
    assert notes[0] == f"Moved from {v2.name} to {v1.name} before it started"  # waiting: re-pinned
    assert notes[-1] == f"Retried on {v1.name}"  # the one that hit the bad weights: retried once
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.INVALID and "failed to load" in v2.validation_error
    assert lane().canary_version is None
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"version.load-failed", "canary.auto-rollback", "lane.repin"} <= actions
    with pytest.raises(ControlError, match="failed validation"):
        rollout.start_canary(lane(), v2, 10, admin)  # cannot come back without a new validation


@pytest.mark.django_db(transaction=True)
def test_a_job_moved_from_a_local_canary_to_a_hosted_engine_is_sent_on_to_the_hosted_queue(demo_lanes, creative, admin):
    """Its message waits on the lane's GPU queue; the GPU worker that takes it must not run a hosted
    engine's job (it has no API key): it sends the job on to the hosted workers' queue."""
    from tests.conftest import waiting_tasks

    hosted_lane = lane("hosted")
    assert hosted_lane.active_version.is_hosted
    local = ModelVersion.objects.get(name="demo-tiny-sd-v1")
    rollout.start_canary(hosted_lane, local, 99, admin)
    rollout.rng.seed(0)
    job = submit_brief(creative, prompt="a canary poster", intent="hosted")
    assert job.model_version == local
    assert ("lanes.tasks.run_job", (job.pk,)) in waiting_tasks(hosted_lane.queue)
    rollout.end_canary(lane("hosted"), admin)  # re-pinned to the hosted engine, its message still on the GPU queue
    with running_worker(queues=[hosted_lane.queue]):
        wait_until(lambda: ("lanes.tasks.run_job", (job.pk,)) in waiting_tasks(settings.HOSTED_QUEUE), 60,
                   "the job's message on the hosted queue")  # fmt: skip
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.model_version == hosted_lane.active_version
    assert ("lanes.tasks.run_job", (job.pk,)) not in waiting_tasks(hosted_lane.queue)
