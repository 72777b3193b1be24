"""Shadow renders (lanes/shadow.py): sampling a lane's finished briefs onto a shadow version, hidden from
their creatives, deferred under load, stopped with its waiting work cancelled; and what cannot shadow."""

from pathlib import Path

import pytest
from django.conf import settings

from accounts.models import Team
from experiments import shadow as comparison
from lanes import shadow
from lanes.actions import submit_brief
from lanes.changes import ConflictError
from lanes.models import AuditEvent, Job, Lane, ModelVersion, Priority, Shadow, Verification
from tests.conftest import make_user, running_worker, validated_copy, wait_for_job, wait_until
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(db):
    return Team.objects.create(name="brand")


@pytest.fixture
def admin(team):
    # In the creative's team on purpose: a shadow job must reach no team, the starter's included.
    return make_user("ada", "admin", team=team)


@pytest.fixture
def maker(team):
    return make_user("casey", "creative", team=team)


@pytest.fixture
def v2(demo_lanes):
    """The demo weights copied under another name: a validated version that renders what production renders."""
    return validated_copy("shadow-v2")


def draft_lane() -> Lane:
    return Lane.objects.select_related("active_version").get(name="fast-draft")


def finished(owner, seed: int, state=Job.State.SUCCEEDED, **fields) -> Job:
    """A routed production job of fast-draft that a worker finished (stored as the worker leaves it)."""
    job = submit_brief(owner, prompt=f"A poster saying SALE {seed}", expected_text="SALE", intent="draft", seed=seed)
    Job.objects.filter(pk=job.pk).update(state=state, **fields)
    job.refresh_from_db()
    return job


@pytest.mark.django_db(transaction=True)
def test_a_shadow_renders_each_sampled_brief_again_on_its_version_hidden_from_the_creative(
    demo_lanes, v2, admin, maker, team
):
    Endpoint.objects.create(team=team, url="http://127.0.0.1:9/hook", events=["job.succeeded", "job.failed"])
    lane = draft_lane()
    lane.canary_min_samples = 6
    lane.canary_max_p95_ratio = 10.0  # run time on a machine shared with other test runs: not what this test is about
    lane.save()
    run = shadow.start(lane, v2, 100, admin)
    briefs = [("A poster saying SALE", "SALE", seed) for seed in range(11, 17)]
    with running_worker():
        production = [
            submit_brief(maker, prompt=prompt, expected_text=text, intent="draft", seed=seed)
            for prompt, text, seed in briefs
        ]
        for job in production:
            assert wait_for_job(job.pk).state == Job.State.SUCCEEDED
        copies = wait_until(
            lambda: len(found := list(Job.objects.filter(shadow_run=run))) == len(production) and found,
            timeout=60, what="a shadow job per production job",
        )  # fmt: skip
        for copy in copies:
            wait_for_job(copy.pk)
        wait_until(
            lambda: not Verification.objects.filter(status__in=("pending", "running")).exists(),
            timeout=60, what="every image verified",
        )  # fmt: skip

    for job in production:
        job.refresh_from_db()
        copy = Job.objects.get(shadow_of=job)
        assert copy.shadow_run == run and copy.model_version == v2 and job.model_version == lane.active_version
        same = ("prompt", "expected_text", "seed", "width", "height", "steps", "guidance", "lane_id", "intent")
        assert {f: getattr(copy, f) for f in same} == {f: getattr(job, f) for f in same}
        assert copy.priority == Priority.BACKGROUND and copy.routed is False
        assert copy.owner == admin and copy.team_id is None and copy.state == Job.State.SUCCEEDED
        # The same weights, prompt and seed: the shadow render is the production render, bit for bit.
        assert copy.final_artifact().sha256 == job.final_artifact().sha256
        assert Verification.objects.filter(job=copy, status__in=("passed", "flagged")).exists()
    assert not Job.objects.filter(shadow_of__in=Job.objects.filter(shadow_run=run)).exists()  # no shadow of a shadow

    # The creative (and their team, the starter's own) sees production only: lists, review queue, webhooks.
    assert set(Job.objects.visible_to(maker)) == set(production)
    assert set(Job.objects.visible_to(admin)) == set(production)
    assert not Verification.objects.visible_to(maker).filter(job__shadow_of__isnull=False).exists()
    delivered = sorted(d.payload["data"]["id"] for d in Delivery.objects.filter(event="job.succeeded"))
    assert delivered == sorted(job.pk for job in production)

    report = comparison.report(run)
    assert len(report.finished) == 6
    assert {(p.production.seed, p.shadow.seed) for p in report.pairs} == {(s, s) for _, _, s in briefs}
    by_arm = {s.arm: s for s in report.summaries}
    assert by_arm["production"].succeeded == by_arm["shadow"].succeeded == 6
    assert by_arm["production"].judged == by_arm["shadow"].judged == 6
    # Identical images read identically: the text comparison finds no difference at all.
    by_metric = {c.metric: c for c in report.comparisons}
    assert by_metric["pass rate"].estimate == 0 and by_metric["edit distance"].estimate == 0
    assert by_metric["run time"].n == by_metric["GPU-seconds"].n == 6
    passed, why = shadow.gate(lane, v2)
    assert passed, why
    assert why.startswith("passed, 6 pairs")


def test_the_share_samples_about_that_share_of_finished_routed_jobs(demo_lanes, v2, admin, maker):
    shadow.start(draft_lane(), v2, 25, admin)
    shadow.rng.seed(7)
    copies = [shadow.sample(finished(maker, seed)) for seed in range(200)]
    taken = sum(1 for c in copies if c is not None)
    assert 30 <= taken <= 70  # 25 % of 200, with a seeded draw
    assert Job.objects.filter(shadow_of__isnull=False).count() == taken


def test_jobs_not_routed_by_the_policy_or_not_finished_are_never_sampled(demo_lanes, v2, admin, maker):
    run = shadow.start(draft_lane(), v2, 100, admin)
    assert shadow.sample(finished(maker, 1, state=Job.State.CANCELLED)) is None
    assert shadow.sample(finished(maker, 2, routed=False)) is None  # an experiment's job
    copy = shadow.sample(finished(maker, 3))
    assert copy is not None
    Job.objects.filter(pk=copy.pk).update(state=Job.State.SUCCEEDED)
    copy.refresh_from_db()
    assert shadow.sample(copy) is None  # a shadow job is not shadowed
    assert shadow.sample(Job.objects.get(pk=copy.shadow_of_id)) is None  # nor a job twice
    assert Job.objects.filter(shadow_run=run).count() == 1


def test_a_shadow_job_is_background_work_deferred_while_the_lane_is_saturated(demo_lanes, v2, admin, maker):
    lane = draft_lane()
    Lane.objects.filter(pk=lane.pk).update(defer_depth=2)
    shadow.start(lane, v2, 100, admin)
    production = finished(maker, 1)
    busy = [submit_brief(maker, prompt="busy", intent="draft", seed=s) for s in (2, 3)]  # queued: the lane is full
    assert all(job.state == Job.State.QUEUED for job in busy)
    copy = shadow.sample(production)
    assert copy.state == Job.State.DEFERRED and copy.admission == Job.Admission.DEFERRED
    assert "background work waits" in copy.admission_reason
    for job in busy:
        Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED)
    from lanes.dispatch import release_deferred

    assert [job.pk for job in release_deferred(lane)] == [copy.pk]
    assert Job.objects.get(pk=copy.pk).state == Job.State.QUEUED


def test_stopping_a_shadow_cancels_its_waiting_jobs_and_samples_no_more(demo_lanes, v2, admin, maker):
    lane = draft_lane()
    run = shadow.start(lane, v2, 100, admin)
    waiting = shadow.sample(finished(maker, 1))
    assert waiting.state == Job.State.QUEUED
    stopped = shadow.stop(lane, admin, reason="enough seen")
    assert stopped.pk == run.pk and stopped.stopped_at is not None and stopped.stopped_reason == "enough seen"
    assert Job.objects.get(pk=waiting.pk).state == Job.State.CANCELLED
    assert shadow.sample(finished(maker, 2)) is None
    event = AuditEvent.objects.get(action="shadow.stop")
    assert event.actor == admin and event.lane == lane and event.after == {"jobs_cancelled": 1}
    assert AuditEvent.objects.filter(action="shadow.start", model_version=v2, after__percent=100).exists()
    assert shadow.running(lane) is None
    with pytest.raises(shadow.ShadowError, match="has no shadow running"):
        shadow.stop(lane, admin)


def test_a_version_that_fails_validation_meanwhile_ends_its_shadow(demo_lanes, v2, admin, maker):
    lane = draft_lane()
    shadow.start(lane, v2, 100, admin)
    ModelVersion.objects.filter(pk=v2.pk).update(status=ModelVersion.Status.INVALID)
    assert shadow.sample(finished(maker, 1)) is None
    run = Shadow.objects.get()
    assert run.stopped_at is not None and "failed validation" in run.stopped_reason
    assert not Job.objects.filter(shadow_of__isnull=False).exists()


# What cannot shadow: refused with the reason, nothing applied.


def refused(lane, version, percent, by, match, **kwargs):
    revision = Lane.objects.get(pk=lane.pk).revision
    shadows, events = list(Shadow.objects.all()), AuditEvent.objects.count()
    with pytest.raises(shadow.ShadowError, match=match):
        shadow.start(lane, version, percent, by, **kwargs)
    assert Lane.objects.get(pk=lane.pk).revision == revision
    assert list(Shadow.objects.all()) == shadows and AuditEvent.objects.count() == events


@pytest.mark.parametrize("percent", [0, 101, -5])
def test_a_share_out_of_range_is_refused(demo_lanes, v2, admin, percent):
    refused(draft_lane(), v2, percent, admin, "between 1 and 100 percent")
    assert not Shadow.objects.exists()


def test_versions_that_cannot_serve_the_lane_cannot_shadow_it(demo_lanes, v2, admin):
    lane = draft_lane()
    for status, said in [(ModelVersion.Status.INVALID, "failed validation"), (ModelVersion.Status.RETIRED, "retired")]:
        ModelVersion.objects.filter(pk=v2.pk).update(status=status)
        refused(lane, v2, 10, admin, said)
    refused(lane, lane.active_version, 10, admin, "already serves lane fast-draft")
    upscaler = ModelVersion.objects.get(family=ModelVersion.Family.LATENT_UPSCALER_X2)
    refused(lane, upscaler, 10, admin, "cannot render from a prompt")
    # SDXL drafts cannot be refined by the hires lane's SD 1.x latent upscaler.
    sdxl = ModelVersion.objects.get(family=ModelVersion.Family.SDXL, name="demo-tiny-sdxl-v1")
    refused(Lane.objects.get(name="hires"), sdxl, 10, admin, "cannot serve demo-tiny-sdxl-v1")
    assert not Shadow.objects.exists()


def test_a_version_whose_files_changed_since_registration_cannot_shadow(demo_lanes, v2, admin):
    weights = next((Path(settings.MODELS_ROOT) / v2.location / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    refused(draft_lane(), v2, 10, admin, "files changed since they were first hashed")
    assert not Shadow.objects.exists()


def test_a_second_shadow_on_a_lane_and_a_stale_page_are_refused(demo_lanes, v2, admin):
    lane = draft_lane()
    first = shadow.start(lane, v2, 10, admin)
    other = ModelVersion.objects.create(
        name="shadow-v3", location=v2.location, content_hash=v2.content_hash, status=ModelVersion.Status.VALIDATED
    )
    with pytest.raises(shadow.ShadowError, match="already shadowed by shadow-v2"):
        shadow.start(lane, other, 10, admin)
    with pytest.raises(ConflictError):
        shadow.stop(lane, admin, expected_revision=1)
    assert list(Shadow.objects.running()) == [first]


def test_a_brief_the_shadow_cannot_take_is_skipped_and_counted_with_the_reason(demo_lanes, v2, admin, maker):
    lane = draft_lane()
    Lane.objects.filter(pk=lane.pk).update(defer_depth=1, hard_cap=1)
    run = shadow.start(lane, v2, 100, admin)
    production, later = finished(maker, 1), finished(maker, 4)
    Job.objects.create(
        owner=maker, prompt="running", intent="draft", lane=lane, model_version=lane.active_version, seed=3,
        width=64, height=64, steps=4, guidance=7.5, state=Job.State.RUNNING,
    )  # fmt: skip
    copy = shadow.sample(production)  # the lane is at its hard cap: admission refuses the shadow job too
    assert copy.state == Job.State.REJECTED and copy.shadow_of == production
    run.refresh_from_db()
    assert run.skipped == 1 and f"job {production.pk}: lane fast-draft at its hard cap" in run.last_skip
    Lane.objects.filter(pk=lane.pk).update(enabled=False)
    assert shadow.sample(later) is None
    run.refresh_from_db()
    assert run.skipped == 2 and run.last_skip.endswith("lane fast-draft is not enabled")
