"""The shadow comparison and gate (experiments/shadow.py, asked through lanes.shadow.gate): pairs with
known figures, stored as a worker and the OCR check leave them, judged against the lane's canary thresholds."""

from pathlib import Path

import pytest
from django.conf import settings

from experiments import shadow as comparison
from lanes import shadow
from lanes.actions import submit_brief
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import Lane, ModelVersion, hash_checkpoint
from tests.conftest import make_user
from tests.experiments.shadowed import OK, finish, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


@pytest.fixture
def maker(db):
    return make_user("casey")


@pytest.fixture
def v2(demo_lanes):
    location = DEMO_CHECKPOINT  # the demo weights: a second registration of the same files
    return ModelVersion.objects.create(
        name="gate-v2", location=location,
        content_hash=hash_checkpoint(Path(settings.MODELS_ROOT) / location), status=ModelVersion.Status.VALIDATED,
    )  # fmt: skip


@pytest.fixture
def lane(demo_lanes):
    lane = Lane.objects.select_related("active_version").get(name="fast-draft")
    lane.canary_min_samples = 6
    lane.canary_max_p95_ratio = 1.5
    lane.canary_max_error_rate_increase = 0.05
    lane.canary_max_flag_rate_increase = 0.10
    lane.verify_threshold = 0.95
    lane.save()
    return lane


@pytest.fixture
def running(lane, v2, admin):
    return shadow.start(lane, v2, 100, admin)


def test_without_enough_finished_pairs_the_gate_stays_shut(lane, v2, maker, running):
    make_pairs(maker, [OK] * 5)
    job = submit_brief(maker, prompt="A poster saying SALE", expected_text="SALE", intent="draft", seed=1)
    finish(job, *OK)
    shadow.sample(job)  # its shadow still waits: the pair does not count yet
    assert shadow.gate(lane, v2) == (False, "too few finished pairs to judge (5, need 6).")
    lane.canary_min_samples = 8  # the lane's own minimum, when above the statistics' minimum
    make_pairs(maker, [OK] * 2)
    assert shadow.gate(lane, v2) == (False, "too few finished pairs to judge (7, need 8).")


def test_a_shadow_like_production_passes_with_each_figure_named(lane, v2, maker, running):
    make_pairs(maker, [("succeeded", 1.1, 1.1, "passed", 1.0)] * 7 + [("succeeded", 1.2, 1.2, "passed", 0.97)])
    passed, why = shadow.gate(lane, v2)
    assert passed, why
    assert why.startswith("passed, 8 pairs: error rate 0.0% vs 0.0% (+0.0%, limit +5.0%)")
    assert "p95 run time 1200 ms vs 1000 ms (×1.20, limit ×1.50)" in why
    assert "GPU-seconds per image ×1.11 (limit ×1.50)" in why
    assert "flag rate +0.0% (limit +10.0%)" in why and "mean edit distance +0.004 (limit +0.050)" in why

    report = comparison.report(running)
    assert [p.shadow.seed for p in report.pairs] == list(range(107, 99, -1))  # newest first
    by_metric = {c.metric: c for c in report.comparisons}
    assert by_metric["run time"].estimate == pytest.approx(0.1125) and by_metric["run time"].significant
    assert by_metric["edit distance"].estimate == pytest.approx(0.00375)
    shadow_summary = report.summaries[1]
    assert shadow_summary.arm == "shadow" and shadow_summary.run_p95 == pytest.approx(1.2)


def test_a_slower_shadow_fails_on_run_time_and_cost(lane, v2, maker, running):
    make_pairs(maker, [("succeeded", 2.0, 2.0, "passed", 1.0)] * 8)
    passed, why = shadow.gate(lane, v2)
    assert not passed
    assert why == (
        "failed, 8 pairs: p95 run time 2000 ms vs 1000 ms (×2.00, limit ×1.50); GPU-seconds per image ×2.00 (limit ×1.50)."
    )


def test_a_shadow_that_fails_more_often_fails_on_its_error_rate(lane, v2, maker, running):
    make_pairs(maker, [OK] * 6 + [("failed", None, None, None, 0)] * 2)
    passed, why = shadow.gate(lane, v2)
    assert not passed and why.startswith("failed, 8 pairs: error rate 25.0% vs 0.0% (+25.0%, limit +5.0%)")


def test_a_shadow_that_garbles_text_fails_on_flag_rate_and_edit_distance(lane, v2, maker, running):
    make_pairs(maker, [OK] * 4 + [("succeeded", 1.0, 1.0, "flagged", 0.5)] * 4)
    passed, why = shadow.gate(lane, v2)
    assert not passed
    assert why == "failed, 8 pairs: flag rate +50.0% (limit +10.0%); mean edit distance +0.250 (limit +0.050)."


def test_text_is_judged_only_when_the_briefs_carry_it(lane, v2, maker, running):
    no_text = ("succeeded", 1.0, 1.0, None, 0)
    make_pairs(maker, [no_text] * 8, production=no_text)
    passed, why = shadow.gate(lane, v2)
    assert passed and "text: no sampled brief expects text" in why


def test_too_few_verified_pairs_keep_the_gate_shut(lane, v2, maker, running):
    no_text = ("succeeded", 1.0, 1.0, None, 0)
    make_pairs(maker, [OK] * 3 + [no_text] * 5)
    passed, why = shadow.gate(lane, v2)
    assert not passed and why.endswith("too few verified pairs to judge text (3, need 6).")


def test_a_version_never_shadowed_or_no_longer_deployable_does_not_pass(lane, v2, maker, admin):
    assert shadow.gate(lane, v2) == (False, "gate-v2 has not shadowed lane fast-draft.")
    shadow.start(lane, v2, 100, admin)
    make_pairs(maker, [OK] * 8)
    assert shadow.gate(lane, v2)[0]
    ModelVersion.objects.filter(pk=v2.pk).update(status=ModelVersion.Status.INVALID)
    assert shadow.gate(lane, v2) == (
        False, "gate-v2 is failed validation: it cannot serve, whatever its shadow showed."
    )  # fmt: skip


def test_the_gate_judges_the_versions_latest_shadow_only(lane, v2, maker, admin, running):
    make_pairs(maker, [OK] * 8)
    assert shadow.gate(lane, v2)[0]
    shadow.stop(lane, admin)
    shadow.start(lane, v2, 100, admin)  # a new shadow starts from nothing
    assert shadow.gate(lane, v2) == (False, "too few finished pairs to judge (0, need 6).")


def test_without_the_experiments_app_listening_the_gate_stays_shut(lane, v2, maker, running):
    from experiments.shadow import on_shadow_gate
    from lanes.signals import shadow_gate

    make_pairs(maker, [OK] * 8)
    assert shadow_gate.disconnect(dispatch_uid="experiments.on_shadow_gate")
    try:
        assert shadow.gate(lane, v2) == (
            False, "no shadow comparison is installed (the experiments app judges shadows)"
        )  # fmt: skip
    finally:
        shadow_gate.connect(on_shadow_gate, dispatch_uid="experiments.on_shadow_gate")
    assert shadow.gate(lane, v2)[0]
