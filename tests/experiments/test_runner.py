import pytest

from experiments import definition as definitions
from experiments import results, runner
from experiments.definition import ExperimentError
from experiments.models import Experiment, ExperimentCell
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane, ModelVersion, Priority, Verification
from tests.conftest import make_user, running_worker, wait_until

pytestmark = pytest.mark.django_db

TWO_ARMS = """\
name: posters
samples: 2
seed: 100
prompts:
  - A summer sale poster
  - {prompt: "Grand opening banner", expected_text: GRAND OPENING}
  - A quiet harbour at dawn
arms:
  - {name: current, lane: fast-draft}
  - {name: fewer-steps, lane: fast-draft, steps: 2}
"""


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


def errors_of(text: str, **kwargs) -> list[str]:
    with pytest.raises(ExperimentError) as exc:
        definitions.parse(text, **kwargs)
    return exc.value.errors


def test_bad_definitions_get_every_error_with_line_numbers_and_start_nothing(demo_lanes, settings):
    ModelVersion.objects.create(name="old", location="demo-tiny-sd", status=ModelVersion.Status.RETIRED)
    Lane.objects.filter(name="preview").update(enabled=False)
    errors = errors_of(
        "name: bad\nprompts: []\narms:\n  - {name: a, lane: preview}\n  - {name: a, lane: fast-draft, version: old}\n"
        "  - {name: c, lane: nowhere}\n  - {name: d, lane: fast-draft, steps: 500}\n"
    )
    assert "the prompt set is empty: give at least one prompt" in errors
    assert "line 4: arm 'a': lane preview is disabled" in errors
    assert "line 5: arm name 'a' is used twice" in errors
    assert "line 5: arm 'a': version old is retired" in errors
    assert "line 6: arm 'c': unknown lane 'nowhere'" in errors
    assert "line 7: arm 'd': Steps must be between 1 and 12 on lane fast-draft." in errors
    assert errors_of("name: x\nprompts: [p]\narms:\n  - {name: a, lane: fast-draft}\n") == [
        "line 3: an experiment compares two or more arms"
    ]
    assert errors_of("name: x\nprompts: [p\narms: []\n")[0].startswith("line 3: not valid YAML")
    settings.EXPERIMENT_MAX_JOBS = 10
    assert any("is 12 jobs; the limit is 10" in e for e in errors_of(TWO_ARMS))
    assert Experiment.objects.count() == 0 and Job.objects.count() == 0


def test_a_duplicate_experiment_name_is_refused(demo_lanes, admin):
    runner.create(admin, definitions.parse(TWO_ARMS))
    assert errors_of(TWO_ARMS) == ["line 1: an experiment named 'posters' already exists"]


def test_pasted_prompt_lines_carry_their_expected_text():
    assert definitions.parse_prompt_lines("# header\nA sale poster || SALE\n\nA plain one\n") == [
        {"prompt": "A sale poster", "expected_text": "SALE"},
        {"prompt": "A plain one", "expected_text": ""},
    ]


@pytest.mark.django_db(transaction=True)
def test_two_arms_three_prompts_two_seeds_fill_every_cell_reproducibly_on_a_real_worker(demo_lanes, admin, settings):
    settings.EXPERIMENT_MAX_OUTSTANDING = 4  # smaller than the experiment, so the pump feeds it
    with running_worker():
        first = runner.create(admin, definitions.parse(TWO_ARMS))
        again = runner.create(admin, definitions.parse(TWO_ARMS.replace("posters", "posters-again")))
        wait_until(
            lambda: not Experiment.objects.filter(state=Experiment.State.RUNNING).exists(),
            timeout=120,
            what="experiments still running",
        )
    rows = results.cell_results(first)
    assert len(rows) == 12 and all(r.state == "succeeded" and r.image_sha256 for r in rows)
    jobs = Job.objects.filter(experiment_cell__experiment=first)
    assert {j.priority for j in jobs} == {Priority.BACKGROUND} and {j.seed for j in jobs} == {100, 101}
    assert {(j.steps, j.experiment_cell.arm.name) for j in jobs} == {(4, "current"), (2, "fewer-steps")}
    # The same arm, prompt and seed render the same image the second time.
    rerun = {(r.arm, r.prompt_index, r.seed): r.image_sha256 for r in results.cell_results(again)}
    assert {(r.arm, r.prompt_index, r.seed): r.image_sha256 for r in rows} == rerun
    # Different arms do differ.
    assert rows[0].image_sha256 != rows[1].image_sha256
    summary = {s.arm: s for s in results.summarize(rows, ["current", "fewer-steps"])}
    current = sorted(j.run_seconds for j in jobs if j.experiment_cell.arm.name == "current")
    assert summary["current"].jobs == summary["current"].succeeded == 6
    assert summary["current"].run_p50 == current[2] and summary["current"].run_p95 == current[5]
    assert summary["current"].peak_memory_bytes == max(
        j.peak_memory_bytes for j in jobs if j.experiment_cell.arm.name == "current"
    )
    assert Experiment.objects.get(pk=first.pk).finished_at is not None


def test_experiment_jobs_are_background_work_deferred_under_saturation(demo_lanes, admin, creative, settings):
    Lane.objects.filter(name="fast-draft").update(defer_depth=1, hard_cap=10)
    busy = submit_brief(creative, prompt="production", intent="draft")  # fills the lane (no worker runs)
    assert busy.state == Job.State.QUEUED
    experiment = runner.create(admin, definitions.parse(TWO_ARMS))
    runner.pump(experiment.pk)  # on_commit does not fire inside a test transaction
    jobs = list(Job.objects.filter(experiment_cell__experiment=experiment))
    assert jobs and all(j.priority == Priority.BACKGROUND and j.state == Job.State.DEFERRED for j in jobs)
    assert all("background work waits" in j.admission_reason for j in jobs)


def test_an_experiment_is_finished_only_once_its_images_text_checks_are_in(
    demo_lanes, admin, settings, django_capture_on_commit_callbacks
):
    """Its summary counts every check: finished earlier, a pass rate could read n=7 of 8."""
    settings.ADMISSION_CONTROL = False
    settings.EXPERIMENT_MAX_OUTSTANDING = 12
    experiment = runner.create(admin, definitions.parse(TWO_ARMS))
    runner.pump(experiment.pk)
    jobs = Job.objects.filter(experiment_cell__experiment=experiment)
    assert jobs.count() == 12
    jobs.update(state=Job.State.SUCCEEDED)
    job = jobs.filter(expected_text="GRAND OPENING").first()
    artifact = Artifact.objects.create(job=job, path="x.png", width=64, height=64, sha256="0" * 64, size_bytes=1)
    check = Verification.objects.create(job=job, artifact=artifact, expected=["GRAND OPENING"])
    assert runner.pump(experiment.pk) == 0
    assert Experiment.objects.get(pk=experiment.pk).state == Experiment.State.RUNNING  # the check is pending
    Verification.objects.filter(pk=check.pk).update(status=Verification.Status.RUNNING)
    check.status = Verification.Status.RUNNING
    with django_capture_on_commit_callbacks(execute=True):  # the end of the check pumps the experiment
        assert check.finish(Verification.Status.PASSED, "found")
    assert Experiment.objects.get(pk=experiment.pk).state == Experiment.State.FINISHED


def test_pause_resume_and_cancel(demo_lanes, admin, settings):
    settings.ADMISSION_CONTROL = False
    settings.EXPERIMENT_MAX_OUTSTANDING = 3
    experiment = runner.create(admin, definitions.parse(TWO_ARMS))
    assert runner.pump(experiment.pk) == 3
    assert runner.pause(experiment) and runner.pump(experiment.pk) == 0
    assert runner.resume(experiment) and not runner.resume(experiment)
    Job.objects.filter(experiment_cell__experiment=experiment).update(state=Job.State.SUCCEEDED)
    assert runner.pump(experiment.pk) == 3
    assert runner.cancel(experiment) == 3  # the three queued ones
    assert Experiment.objects.get(pk=experiment.pk).state == Experiment.State.CANCELLED
    assert runner.pump(experiment.pk) == 0
    assert ExperimentCell.objects.filter(experiment=experiment, job__isnull=True).count() == 6


def test_an_arm_may_name_a_version_alone_and_runs_on_the_lane_it_serves(demo_lanes):
    Lane.objects.exclude(name="final-render").update(enabled=False)
    definition = definitions.parse(
        "name: v\nprompts: [p]\narms:\n  - {name: a, version: demo-tiny-sd-v1}\n  - {name: b, lane: final-render}\n"
    )
    assert [(arm.lane.name, arm.version.name) for arm in definition.arms] == [
        ("final-render", "demo-tiny-sd-v1"), ("final-render", "demo-tiny-sd-v1"),
    ]  # fmt: skip
    ModelVersion.objects.create(name="idle", location="demo-tiny-sd", status=ModelVersion.Status.VALIDATED)
    assert errors_of(
        "name: w\nprompts: [p]\narms:\n  - {name: a, version: idle}\n  - {name: b, lane: final-render}\n"
    ) == ["line 4: arm 'a': version 'idle' serves no enabled lane; name the lane to run it on"]


def test_an_experiment_whose_lane_closes_stops_with_the_reason_and_is_audited(demo_lanes, admin, settings):
    from lanes.models import AuditEvent

    settings.ADMISSION_CONTROL = False
    settings.EXPERIMENT_MAX_OUTSTANDING = 2
    experiment = runner.create(admin, definitions.parse(TWO_ARMS))
    assert runner.pump(experiment.pk) == 2
    # fast-draft and the whole chain behind it close: the next cells cannot be submitted.
    Lane.objects.filter(name__in=["fast-draft", "fallback"]).update(enabled=False)
    Job.objects.filter(experiment_cell__experiment=experiment).update(state=Job.State.SUCCEEDED)
    assert runner.pump(experiment.pk) == 0
    experiment.refresh_from_db()
    assert experiment.state == Experiment.State.CANCELLED
    assert experiment.stopped_reason.startswith("arm current can no longer run: intent: Lane 'fast-draft' is disabled")
    actions = list(AuditEvent.objects.order_by("at", "id").values_list("action", "actor_name"))
    assert actions == [("experiment.start", "ada"), ("experiment.stop", "laneway")]
