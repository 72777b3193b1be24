"""Progressive rollouts: plans, each step transition of beat's check, the ops controls, the hash guard.

Jobs the analysis reads are created as finished rows (the analysis reads rows, however they got
there); the hash guard test runs a real worker that loads (refuses to load) real checkpoint files.
"""

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import Team
from lanes import canary as canary_judge
from lanes import policy, progressive, rollout
from lanes.actions import submit_brief
from lanes.changes import ConflictError, ControlError
from lanes.models import (
    Artifact,
    AuditEvent,
    Job,
    Lane,
    ModelVersion,
    Rollout,
    RolloutPlan,
    Verification,
)
from tests.conftest import make_user, running_worker, validated_copy, wait_for_job
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

PLAN = """\
steps:
  - {percent: 10, min_samples: 5}
  - {percent: 30, min_samples: 5}
  - {percent: 60, min_samples: 5}
thresholds: {max_error_rate_increase: 0.1, max_p95_ratio: 1.5, max_gpu_seconds_ratio: 1.5}
"""


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


@pytest.fixture
def ops(db):
    return make_user("otto", "ops")


@pytest.fixture
def v2(demo_lanes):
    return validated_copy("progressive-v2")


def lane(name="fast-draft") -> Lane:
    return Lane.objects.select_related("active_version", "canary_version").get(name=name)


@pytest.fixture
def planned(v2, admin):
    plan = progressive.plan_from_yaml(PLAN)
    progressive.save_plan(lane(), plan, admin)
    return v2


def finished(owner, version, n, *, failed=0, run_s=0.5, flagged=None, ago=0.0):
    """n finished routed jobs on fast-draft pinned to `version`, `ago` seconds ago."""
    target = lane()
    when = timezone.now() - timedelta(seconds=ago)
    jobs = []
    for i in range(n):
        jobs.append(
            Job.objects.create(
                owner=owner,
                prompt="p",
                intent="draft",
                lane=target,
                model_version=version,
                seed=i,
                width=64,
                height=64,
                steps=4,
                guidance=7.5,
                state=Job.State.FAILED if i < failed else Job.State.SUCCEEDED,
                started_at=when - timedelta(seconds=run_s),
                finished_at=when,
                run_seconds=run_s,
                gpu_seconds=run_s,
                expected_text="SALE" if flagged is not None else "",
            )  # fmt: skip
        )
    if flagged is not None:
        for i, job in enumerate(jobs):
            artifact = Artifact.objects.create(job=job, path="x.png", width=64, height=64, sha256="0", size_bytes=1)
            similarity = 0.5 if i < flagged else 1.0
            Verification.objects.create(
                job=job, artifact=artifact, lane=target, model_version=version, expected=["SALE"],
                status=Verification.Status.FLAGGED if i < flagged else Verification.Status.PASSED,
                details={"scores": [{"expected": "SALE", "similarity": similarity}]},
            )  # fmt: skip
    return jobs


def current() -> Rollout:
    return Rollout.objects.select_related("version").get(lane__name="fast-draft", state=Rollout.State.RUNNING)


# Plans


def test_a_plan_is_read_from_yaml_with_defaults_for_thresholds_left_out():
    plan = progressive.plan_from_yaml("steps:\n  - {percent: 5, min_minutes: 2.5}\n")
    assert plan.steps == [{"percent": 5, "min_samples": None, "min_minutes": 2.5}]
    assert plan.thresholds["max_p95_ratio"] == 1.5 and plan.thresholds["max_edit_distance_increase"] == 0.10
    assert plan.require_shadow is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ("steps:\n  - {percent: 20, min_samples: 5}\n  - {percent: 10, min_samples: 5}\n",
         "line 3: step 2: percentages must increase (10 % comes after 20 %)"),
        ("steps:\n  - {percent: 20}\n", "line 2: step 1 needs a minimum: min_samples, min_minutes or both"),
        ("steps:\n  - {percent: 100, min_samples: 5}\n", "line 2: step 1: percent must be a whole number from 1 to 99"),
        ("steps:\n  - {percent: 5, min_samples: 0}\n", "line 2: step 1: min_samples must be a whole number"),
        ("steps:\n  - {percent: 5, min_samples: 3}\nthresholds:\n  max_p95_ratio: 0.5\n",
         "line 4: max_p95_ratio (p95 run-time ratio) must be a number from 1 to 100, not 0.5"),
        ("steps:\n  - {percent: 5, min_samples: 3}\nthresholds:\n  max_error_rate_increase: 2\n",
         "line 4: max_error_rate_increase (error rate increase) must be a number from 0 to 1, not 2"),
        ("steps: []\n", "line 1: a plan needs a list of steps"),
        ("steps:\n  - {percent: 5, min_samples: 3, wait: 1}\n", "line 2: step 1: unknown key 'wait'"),
        ("steps:\n  - {percent: 5, min_samples: 3}\nrequire_shadow: sometimes\n",
         "line 3: require_shadow must be true or false, not 'sometimes'"),
    ],
)  # fmt: skip
def test_a_bad_plan_is_refused_with_the_line_of_each_problem(text, expected):
    with pytest.raises(progressive.PlanError) as exc:
        progressive.plan_from_yaml(text)
    assert any(error.startswith(expected) for error in exc.value.errors), exc.value.errors


def test_a_plan_on_a_lane_without_a_baseline_is_refused_and_nothing_is_saved(v2, admin):
    active = lane().active_version
    ModelVersion.objects.filter(pk=active.pk).update(status=ModelVersion.Status.INVALID)
    plan = progressive.plan_from_yaml(PLAN)
    with pytest.raises(ControlError, match="has no baseline"):
        progressive.save_plan(lane(), plan, admin)
    assert not RolloutPlan.objects.exists()


def test_the_policy_file_carries_a_lanes_plan_and_refuses_a_bad_one_with_its_line(demo_lanes, admin):
    text = policy.export()
    routes_at = text.index("- name: fast-draft")
    plan = "  rollout:\n    steps:\n    - {percent: 5, min_samples: 20}\n    - {percent: 3, min_samples: 20}\n"
    bad = text[:routes_at] + text[routes_at:].replace("\n", "\n" + plan, 1)
    bad_line = bad[: bad.index("percent: 3")].count("\n") + 1
    with pytest.raises(policy.PolicyError) as exc:
        policy.apply(bad, admin)
    assert f"line {bad_line}: rollout: step 2: percentages must increase (3 % comes after 5 %)" in exc.value.errors
    assert not RolloutPlan.objects.exists()
    policy.apply(bad.replace("percent: 3", "percent: 30"), admin)
    plan_row = RolloutPlan.objects.get(lane__name="fast-draft")
    assert [s["percent"] for s in plan_row.steps] == [5, 30]
    assert "rollout:" in policy.export()  # it round-trips


# Starting


def test_a_rollout_starts_at_the_first_step_and_is_audited_with_a_webhook(planned, admin):
    team = Team.objects.create(name="web")
    endpoint = Endpoint.objects.create(team=team, url="https://hooks.example.com/in", events=["rollout.started"])
    started = progressive.start(lane(), planned, admin)
    after = lane()
    assert after.canary_version == planned and after.canary_percent == 10
    assert started.step == 0 and started.baseline == after.active_version and started.state == "running"
    assert AuditEvent.objects.filter(action="rollout.started", actor=admin, model_version=planned).exists()
    delivery = Delivery.objects.get(endpoint=endpoint, event="rollout.started")
    assert delivery.payload["data"]["percent"] == 10 and delivery.payload["data"]["version"] == planned.name


def test_a_rollout_needs_a_plan_and_a_good_version(v2, admin):
    with pytest.raises(ControlError, match="no rollout plan"):
        progressive.start(lane(), v2, admin)
    plan = progressive.plan_from_yaml(PLAN)
    progressive.save_plan(lane(), plan, admin)
    ModelVersion.objects.filter(pk=v2.pk).update(status=ModelVersion.Status.INVALID)
    with pytest.raises(ControlError, match="failed validation"):
        progressive.start(lane(), v2, admin)
    assert not Rollout.objects.exists() and lane().canary_version is None


def test_a_version_whose_files_changed_since_registration_cannot_start_a_rollout(planned, admin):
    weights = next((Path(settings.MODELS_ROOT) / planned.location / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of a weight: still loadable, but not the registered files
    weights.write_bytes(bytes(data))
    with pytest.raises(ControlError, match="changed since they were hashed at registration"):
        progressive.start(lane(), planned, admin)
    assert not Rollout.objects.exists() and lane().canary_version is None


# Beat's step transitions


def test_too_few_samples_wait(planned, admin, creative):
    progressive.start(lane(), planned, admin)
    finished(creative, planned, 3)
    finished(creative, lane().active_version, 30)
    outcome = progressive.check_rollouts()["fast-draft"]
    assert outcome.startswith("wait") and "step needs 5 canary jobs, has 3" in outcome
    row = current()
    assert row.step == 0 and lane().canary_percent == 10
    assert {m["name"]: m["status"] for m in row.analysis}["max_error_rate_increase"] == "waiting"


def test_a_passing_step_advances_and_after_the_last_the_version_is_promoted(planned, admin, creative):
    progressive.start(lane(), planned, admin)
    v1 = lane().active_version
    started = current().step_started_at
    for n, expected in enumerate((30, 60, 100), start=1):
        # This step's jobs finish 1 s after it began: each step counts only the jobs finished since it began.
        ahead = (current().step_started_at - timezone.now()).total_seconds() + 1
        finished(creative, planned, 6, ago=-ahead)
        finished(creative, v1, 6, ago=-ahead)
        outcome = progressive.check_rollouts()["fast-draft"]
        if expected == 100:
            assert outcome.startswith("promoted"), outcome
            break
        assert outcome.startswith("advanced"), outcome
        assert lane().canary_percent == expected and current().step == n
        # The next step begins 10 s later than the last, after every job made so far.
        Rollout.objects.filter(pk=current().pk).update(step_started_at=started + timedelta(seconds=10 * n))
        assert progressive.check_rollouts()["fast-draft"].startswith("wait")
    after = lane()
    assert after.active_version == planned and after.canary_version is None
    done = Rollout.objects.get(lane=after)
    assert done.state == Rollout.State.PROMOTED and done.ended_at is not None
    assert done.reason.startswith("every step passed; promoted by the plan")
    actions = list(
        AuditEvent.objects.filter(lane=after, action__startswith="rollout.").values_list("action", flat=True)
    )
    assert actions.count("rollout.advanced") == 2 and "rollout.promoted" in actions


@pytest.mark.parametrize(
    "canary, baseline, reason",
    [
        (dict(failed=3), dict(), "error rate 50.0% vs 0.0%"),
        (dict(run_s=2.0), dict(run_s=0.5), "p95 run time 2000 ms vs 500 ms"),
        (dict(flagged=4), dict(flagged=0), "verification flag rate 66.7% vs 0.0%"),
    ],
)
def test_a_failing_metric_rolls_back_and_moves_waiting_jobs(planned, admin, creative, canary, baseline, reason):
    progressive.start(lane(), planned, admin)
    v1 = lane().active_version
    waiting = Job.objects.create(
        owner=creative, prompt="p", intent="draft", lane=lane(), model_version=planned, seed=1, width=64, height=64,
        steps=4, guidance=7.5, state=Job.State.QUEUED,
    )  # fmt: skip
    finished(creative, planned, 6, **canary)
    finished(creative, v1, 6, **baseline)
    outcome = progressive.check_rollouts()["fast-draft"]
    assert outcome.startswith("rolled back") and reason in outcome
    after = lane()
    assert after.canary_version is None and after.active_version == v1
    row = Rollout.objects.get(lane=after)
    assert row.state == Rollout.State.ROLLED_BACK and reason in row.reason
    assert AuditEvent.objects.filter(action="rollout.rolled-back", actor=None).exists()
    waiting.refresh_from_db()
    assert waiting.model_version == v1 and "rolled back" in waiting.version_note


def test_a_plain_canary_check_leaves_a_rollout_to_its_plan(planned, admin, creative):
    progressive.start(lane(), planned, admin)
    Lane.objects.filter(name="fast-draft").update(canary_min_samples=5)
    finished(creative, planned, 6, run_s=2.0)
    finished(creative, lane().active_version, 6, run_s=0.5)
    assert "fast-draft" not in canary_judge.check_canaries()


# Ops controls


def test_pause_holds_the_step_resume_releases_it(planned, admin, ops, creative):
    progressive.start(lane(), planned, admin)
    progressive.pause(lane(), ops, lane().revision)
    finished(creative, planned, 6)
    finished(creative, lane().active_version, 6)
    assert progressive.check_rollouts()["fast-draft"].startswith("wait: paused")
    assert lane().canary_percent == 10 and current().paused
    progressive.resume(lane(), ops, lane().revision)
    assert progressive.check_rollouts()["fast-draft"].startswith("advanced")
    actions = set(AuditEvent.objects.filter(actor=ops).values_list("action", flat=True))
    assert {"rollout.paused", "rollout.resumed"} <= actions


def test_a_paused_rollout_still_rolls_back_a_failing_version(planned, admin, ops, creative):
    progressive.start(lane(), planned, admin)
    progressive.pause(lane(), ops)
    finished(creative, planned, 6, failed=6)
    finished(creative, lane().active_version, 6)
    assert progressive.check_rollouts()["fast-draft"].startswith("rolled back")


def test_skip_goes_to_the_next_step_and_from_the_last_promotes(planned, admin, ops):
    progressive.start(lane(), planned, admin)
    progressive.skip(lane(), ops)
    assert lane().canary_percent == 30 and current().step == 1
    progressive.skip(lane(), ops)
    progressive.skip(lane(), ops)
    assert lane().active_version == planned
    assert Rollout.objects.get(lane__name="fast-draft").state == Rollout.State.PROMOTED


def test_abort_ends_the_canary_and_moves_waiting_jobs(planned, admin, ops, creative):
    progressive.start(lane(), planned, admin)
    job = submit_brief(creative, prompt="p", intent="draft")
    Job.objects.filter(pk=job.pk).update(model_version=planned)
    progressive.abort(lane(), ops, lane().revision)
    after = lane()
    assert after.canary_version is None
    assert Rollout.objects.get(lane=after).state == Rollout.State.ABORTED
    assert Job.objects.get(pk=job.pk).model_version == after.active_version
    with pytest.raises(ControlError, match="no rollout running"):
        progressive.pause(lane(), ops)


def test_the_second_of_two_changes_from_the_same_page_gets_a_conflict_naming_the_first(planned, admin, ops):
    progressive.start(lane(), planned, admin)
    seen = lane().revision
    progressive.pause(lane(), ops, seen)
    with pytest.raises(ConflictError, match=r"by otto \(rollout.paused"):
        progressive.skip(lane(), admin, seen)
    assert current().step == 0


def test_stopping_the_canary_by_hand_aborts_its_rollout(planned, admin):
    progressive.start(lane(), planned, admin)
    rollout.end_canary(lane(), admin)
    assert Rollout.objects.get(lane__name="fast-draft").state == Rollout.State.ABORTED


# The hash guard, on a real worker


@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_a_version_whose_files_changed_quarantines_it_and_the_rollout_is_aborted(
    planned, admin, creative
):
    progressive.start(lane(), planned, admin)
    Lane.objects.filter(name="fast-draft").update(canary_percent=99)
    rollout.rng.seed(0)
    weights = next((Path(settings.MODELS_ROOT) / planned.location / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a changed weight that still loads: only the hash can tell
    weights.write_bytes(bytes(data))
    with running_worker():
        job = submit_brief(creative, prompt="a changed canary", intent="draft")
        assert job.model_version == planned
        done = wait_for_job(job.pk)
    planned.refresh_from_db()
    assert planned.status == ModelVersion.Status.INVALID and "changed since they were hashed" in (
        planned.validation_error
    )
    row = Rollout.objects.get(lane__name="fast-draft")
    assert row.state == Rollout.State.ABORTED and "changed since" in row.reason
    assert lane().canary_version is None
    # The brief itself succeeded, retried on the serving version.
    assert done.state == Job.State.SUCCEEDED and done.model_version == lane().active_version
    assert AuditEvent.objects.filter(action="rollout.aborted", model_version=planned).exists()


def test_a_plan_requiring_a_shadow_starts_only_once_the_versions_shadow_passes(v2, admin):
    """The shadow pairs are finished rows with known figures (tests/experiments/shadowed.py), judged by the
    experiments app's paired statistics through lanes.shadow.gate, as the gate's own tests do."""
    from lanes import shadow
    from tests.experiments.shadowed import OK, make_pairs

    fast = lane()
    fast.canary_min_samples = 6
    fast.save()
    progressive.save_plan(lane(), progressive.plan_from_yaml(PLAN + "require_shadow: true\n"), admin)
    assert RolloutPlan.objects.get().describe().startswith("a passing shadow → 10 % for 5 jobs")
    with pytest.raises(ControlError, match="needs a passing shadow of progressive-v2 first: .*has not shadowed"):
        progressive.start(lane(), v2, admin)
    shadow.start(lane(), v2, 100, admin)
    make_pairs(make_user("casey"), [OK] * 3)
    with pytest.raises(ControlError, match=r"too few finished pairs to judge \(3, need 6\)"):
        progressive.start(lane(), v2, admin)
    assert not Rollout.objects.exists() and lane().canary_version_id is None
    make_pairs(make_user("cleo"), [OK] * 3, first_seed=200)
    started = progressive.start(lane(), v2, admin)
    assert started.state == Rollout.State.RUNNING and lane().canary_percent == 10
    # The policy file carries the requirement and reads it back.
    assert "require_shadow: true" in policy.export()
