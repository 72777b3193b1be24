"""Progressive rollouts through the API: a plan (422 for a bad one), start, the ops controls, 409/412."""

import shutil
from pathlib import Path

import pytest
from django.conf import settings

from lanes import progressive
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import Lane, ModelVersion, Rollout, RolloutPlan, hash_checkpoint

pytestmark = pytest.mark.django_db

STEPS = [{"percent": 10, "min_samples": 5}, {"percent": 50, "min_minutes": 2}]


@pytest.fixture
def v2(demo_lanes):
    target = Path(settings.MODELS_ROOT) / "api-rollout-v2"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    return ModelVersion.objects.create(
        name="api-rollout-v2", location="api-rollout-v2", content_hash=hash_checkpoint(target), status="validated"
    )


def test_a_plan_is_set_a_rollout_started_paused_skipped_and_promoted(callers, v2):
    put = callers["admin"].send("PUT", "/lanes/fast-draft/rollout/plan", {"steps": STEPS, "thresholds": {}})
    assert put.status_code == 200, put.json()
    assert put.json()["plan"]["describe"] == "10 % for 5 jobs → 50 % for 2 min → 100 %"
    assert put.json()["plan"]["thresholds"]["max_gpu_seconds_ratio"] == 1.5
    started = callers["admin"].post("/lanes/fast-draft/rollout", {"version": "api-rollout-v2"})
    assert started.status_code == 200 and started.json()["rollout"]["percent"] == 10
    assert started.json()["rollout"]["step"] == 1 and started.json()["rollout"]["state"] == "running"
    etag = started["ETag"]
    paused = callers["ops"].send("POST", "/lanes/fast-draft/rollout/pause", None, headers={"If-Match": etag})
    assert paused.status_code == 200 and paused.json()["rollout"]["paused"] is True
    stale = callers["ops"].send("POST", "/lanes/fast-draft/rollout/skip", None, headers={"If-Match": etag})
    assert stale.status_code == 412 and "rollout.paused" in stale.json()["detail"]
    assert callers["ops"].post("/lanes/fast-draft/rollout/skip", None).json()["rollout"]["percent"] == 50
    promoted = callers["ops"].post("/lanes/fast-draft/rollout/skip", None)
    assert promoted.json()["rollout"]["state"] == "promoted"
    assert Lane.objects.get(name="fast-draft").active_version == v2
    again = callers["ops"].post("/lanes/fast-draft/rollout/abort", None)
    assert again.status_code == 409 and "no rollout running" in again.json()["detail"]


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"steps": [{"percent": 50, "min_samples": 5}, {"percent": 20, "min_samples": 5}]}, "steps[1].percent",
         "percentages must increase"),
        ({"steps": [{"percent": 10}]}, "steps[0]", "needs a minimum"),
        ({"steps": [{"percent": 10, "min_samples": 5}], "thresholds": {"max_p95_ratio": 0.2}},
         "thresholds.max_p95_ratio", "from 1 to 100"),
        ({"steps": [{"percent": 10, "min_samples": 5}], "thresholds": {"max_flag_rate_increase": True}},
         "thresholds.max_flag_rate_increase", "from 0 to 1"),
        ({"steps": []}, "steps", "needs a list of steps"),
    ],
)  # fmt: skip
def test_a_bad_plan_is_422_naming_each_problem_and_nothing_is_saved(callers, v2, body, field, words):
    answer = callers["admin"].send("PUT", "/lanes/fast-draft/rollout/plan", body)
    assert answer.status_code == 422
    assert words in answer.json()["errors"][field]
    assert not RolloutPlan.objects.exists()


def test_only_admins_set_plans_and_start_rollouts_and_ops_operate_them(callers, v2):
    body = {"steps": STEPS}
    assert callers["ops"].send("PUT", "/lanes/fast-draft/rollout/plan", body).status_code == 403
    assert callers["creative"].get("/lanes/fast-draft/rollout").status_code == 403
    assert callers[None].get("/lanes/fast-draft/rollout").status_code == 401
    assert callers["ops"].get("/lanes/fast-draft/rollout").json() == {
        "lane": "fast-draft", "revision": Lane.objects.get(name="fast-draft").revision, "plan": None, "rollout": None,
    }  # fmt: skip
    no_plan = callers["admin"].post("/lanes/fast-draft/rollout", {"version": "api-rollout-v2"})
    assert no_plan.status_code == 409 and "no rollout plan" in no_plan.json()["detail"]
    plan = progressive.plan_from_yaml("steps: [{percent: 5, min_samples: 1}]")
    progressive.save_plan(Lane.objects.get(name="fast-draft"), plan, None)
    assert callers["ops"].post("/lanes/fast-draft/rollout", {"version": "api-rollout-v2"}).status_code == 403
    unknown = callers["admin"].post("/lanes/fast-draft/rollout", {"version": "nope"})
    assert unknown.status_code == 422
    assert not Rollout.objects.exists()
