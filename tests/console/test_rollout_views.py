"""The lane page's rollout panel and its controls: plan box, start, pause/resume/skip/abort, the 409."""

import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from lanes import progressive
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import AuditEvent, Lane, ModelVersion, Rollout, RolloutPlan, hash_checkpoint
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

PLAN = "steps:\n- {percent: 10, min_samples: 5}\n- {percent: 40, min_minutes: 1}\nthresholds: {max_p95_ratio: 2}\n"


@pytest.fixture
def v2(demo_lanes):
    target = Path(settings.MODELS_ROOT) / "panel-v2"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    return ModelVersion.objects.create(
        name="panel-v2", location="panel-v2", content_hash=hash_checkpoint(target), status="validated"
    )


def lane() -> Lane:
    return Lane.objects.get(name="fast-draft")


def url(name: str) -> str:
    return reverse(name, args=["fast-draft"])


def test_an_admin_saves_a_plan_and_starts_a_rollout_from_the_lane_page(client, v2):
    admin = make_user("ada", "admin")
    client.force_login(admin)
    saved = client.post(url("lane-rollout-plan"), {"plan": PLAN, "revision": lane().revision})
    assert saved.status_code == 302
    assert RolloutPlan.objects.get(lane=lane()).describe() == "10 % for 5 jobs → 40 % for 1 min → 100 %"
    started = client.post(url("lane-rollout-start"), {"version": "panel-v2", "revision": lane().revision})
    assert started.status_code == 302
    assert lane().canary_percent == 10
    page = client.get(url("lane-detail"))
    assert page.status_code == 200
    assert "panel-v2" in page.text and "step 1 of 2: 10 %" in page.text and 'id="rollout-controls"' in page.text
    part = client.get(url("lane-detail") + "?part=rollout", headers={"HX-Request": "true"})
    assert part.text.lstrip().startswith('<section id="lane-rollout"') and "<html" not in part.text


def test_a_bad_plan_from_the_form_gets_its_line_and_saves_nothing(client, v2):
    client.force_login(make_user("ada", "admin"))
    bad = "steps:\n- {percent: 30, min_samples: 5}\n- {percent: 20}\n"
    answer = client.post(url("lane-rollout-plan"), {"plan": bad, "revision": lane().revision})
    assert answer.status_code == 400
    assert "line 3: step 2: percentages must increase (20 % comes after 30 %)" in answer.text
    assert "line 3: step 2 needs a minimum" in answer.text
    assert not RolloutPlan.objects.exists()


def test_ops_pause_and_a_second_person_on_the_same_page_gets_409_naming_the_first(client, v2):
    admin = make_user("ada", "admin")
    plan = progressive.plan_from_yaml(PLAN)
    progressive.save_plan(lane(), plan, admin)
    progressive.start(lane(), v2, admin)
    seen = lane().revision
    client.force_login(make_user("otto", "ops"))
    assert client.post(url("lane-rollout-pause"), {"revision": seen}).status_code == 302
    client.force_login(make_user("olga", "ops"))
    second = client.post(url("lane-rollout-abort"), {"revision": seen})
    assert second.status_code == 409 and "otto" in second.text and "rollout.paused" in second.text
    row = Rollout.objects.get(lane=lane())
    assert row.state == Rollout.State.RUNNING and row.paused
    assert client.post(url("lane-rollout-resume"), {"revision": lane().revision}).status_code == 302
    assert client.post(url("lane-rollout-skip"), {"revision": lane().revision}).status_code == 302
    assert lane().canary_percent == 40
    assert client.post(url("lane-rollout-abort"), {"revision": lane().revision}).status_code == 302
    assert Rollout.objects.get(lane=lane()).state == Rollout.State.ABORTED
    actors = set(AuditEvent.objects.filter(action__startswith="rollout.").values_list("actor_name", flat=True))
    assert {"ada", "otto", "olga"} <= actors


def test_who_may_do_what_with_a_rollout(client, v2):
    for role, plan_status, pause_status in (("creative", 403, 403), ("ops", 403, 400), ("admin", 400, 400)):
        client.force_login(make_user(f"user-{role}", role))
        # An empty plan and a pause of no rollout: refused for their content, once the role may ask.
        assert client.post(url("lane-rollout-plan"), {"plan": "", "revision": 1}).status_code == plan_status
        assert client.post(url("lane-rollout-pause"), {"revision": lane().revision}).status_code == pause_status
    client.logout()
    assert client.post(url("lane-rollout-pause"), {"revision": 1}).status_code == 302  # to the login page
