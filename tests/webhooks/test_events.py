"""Each event is written where its change is made, in the change's transaction, for the teams that want it."""

import json
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from accounts.models import Team
from experiments import definition as definitions
from experiments import runner
from lanes import control, review, rollout
from lanes.actions import submit_brief
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import Artifact, Job, Lane, ModelVersion, Verification, hash_checkpoint
from tests.conftest import make_user, wait_for_job, wait_until
from tests.webhooks.receiver import Receiver, serve
from webhooks.models import Delivery, Endpoint

ALL = [
    "job.succeeded", "job.failed", "verification.flagged", "verification.reviewed",
    "canary.rolled_back", "lane.changed", "experiment.finished",
]  # fmt: skip


def subscribe(team, url="https://hooks.example.com/in", events=ALL) -> Endpoint:
    return Endpoint.objects.create(team=team, url=url, events=list(events))


def events_of(endpoint) -> list[str]:
    return list(Delivery.objects.filter(endpoint=endpoint).order_by("id").values_list("event", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_succeeded_job_is_delivered_to_its_teams_endpoint_and_not_to_another_teams(worker, receiver, team):
    other_team = Team.objects.create(name="agency")
    other = Receiver()
    thread = serve(other)
    try:
        ours = subscribe(team, receiver.url, ["job.succeeded"])
        theirs = subscribe(other_team, other.url, ["job.succeeded"])
        casey = make_user("casey", "creative", team)
        job = wait_for_job(submit_brief(casey, prompt="A lemonade stand poster", intent="draft").pk)
        assert job.state == Job.State.SUCCEEDED, job.error

        got = wait_until(lambda: receiver.received, what="the job.succeeded delivery")
        delivery = Delivery.objects.get(endpoint=ours)
        wait_until(lambda: Delivery.objects.get(pk=delivery.pk).state == Delivery.State.SUCCEEDED)
    finally:
        other.shutdown()
        other.server_close()
        thread.join(timeout=5)
    payload = json.loads(got[0].body)
    assert payload["type"] == "job.succeeded"
    data = payload["data"]
    assert (data["id"], data["state"], data["lane"], data["intent"]) == (job.pk, "succeeded", job.lane.name, "draft")
    assert data["version"] == job.model_version.name and data["error"] == ""
    assert data["images"] == {"final": reverse("job-image", args=[job.pk, "final"])}
    assert data["timings"]["finished_at"] and data["timings"]["run_seconds"] > 0
    assert not Delivery.objects.filter(endpoint=theirs).exists() and other.received == []


@pytest.mark.django_db
def test_a_failed_job_is_announced_with_its_error(demo_lanes, team):
    endpoint = subscribe(team, events=["job.failed", "job.succeeded"])
    job = submit_brief(make_user("casey", "creative", team), prompt="poster", intent="draft")
    assert job.mark_running("w:1", None, "cpu")
    assert job.mark_failed("RuntimeError: the pipeline broke")
    [delivery] = Delivery.objects.filter(endpoint=endpoint)
    assert delivery.event == "job.failed"
    assert delivery.payload["data"]["error"] == "RuntimeError: the pipeline broke"
    assert delivery.payload["data"]["state"] == "failed"


@pytest.mark.django_db
def test_a_flag_and_its_review_are_announced_to_the_jobs_team(demo_lanes, team, media_root):
    endpoint = subscribe(team)
    subscribe(Team.objects.create(name="agency"))
    casey = make_user("casey", "creative", team)
    job = submit_brief(casey, prompt="poster", intent="draft", expected_text="SALE")
    Path(settings.MEDIA_ROOT, "a.png").parent.mkdir(parents=True, exist_ok=True)
    artifact = Artifact.objects.create(job=job, path="a.png", width=8, height=8, sha256="0", size_bytes=9)
    verification = Verification.objects.create(
        job=job, artifact=artifact, lane=job.lane, model_version=job.model_version, status="running", expected=["SALE"]
    )
    assert verification.finish(Verification.Status.FLAGGED, "SALE not found")
    review.approve(verification, casey)

    assert events_of(endpoint) == ["verification.flagged", "verification.reviewed"]
    flagged, reviewed = (d.payload["data"] for d in Delivery.objects.filter(endpoint=endpoint).order_by("id"))
    assert (flagged["job"], flagged["status"], flagged["reason"]) == (job.pk, "flagged", "SALE not found")
    assert flagged["image"] == reverse("job-image", args=[job.pk, "final"])
    assert (reviewed["decision"], reviewed["decided_by"]) == ("approved", "casey")
    assert Delivery.objects.count() == 2  # the other team's endpoint heard nothing


@pytest.mark.django_db
def test_every_lane_change_is_announced_fleet_wide(demo_lanes, team):
    ours, theirs = subscribe(team), subscribe(Team.objects.create(name="agency"), events=["lane.changed"])
    lane = Lane.objects.get(name="fast-draft")
    control.set_mode(lane, "draining", make_user("olive", "ops"), lane.revision)
    for endpoint in (ours, theirs):
        [delivery] = Delivery.objects.filter(endpoint=endpoint)
        data = delivery.payload["data"]
        assert delivery.event == "lane.changed" and data["lane"] == "fast-draft" and data["by"] == "olive"
        assert data["revision"] == lane.revision + 1 and data["action"].startswith("lane.")
        assert data["before"] != data["after"]


@pytest.mark.django_db
def test_a_refused_lane_change_announces_nothing(demo_lanes, team):
    subscribe(team)
    lane = Lane.objects.get(name="fast-draft")
    with pytest.raises(Exception, match="changed"):
        control.set_mode(lane, "draining", None, lane.revision - 1)
    assert not Delivery.objects.exists()


@pytest.mark.django_db
def test_a_rollback_is_announced_as_canary_rolled_back(demo_lanes, team, settings):
    endpoint = subscribe(team, events=["canary.rolled_back"])
    location = Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT
    v2 = ModelVersion.objects.create(
        name="hooks-v2", location=DEMO_CHECKPOINT, content_hash=hash_checkpoint(location),
        status=ModelVersion.Status.VALIDATED,
    )  # fmt: skip
    lane = Lane.objects.get(name="fast-draft")
    v1 = lane.active_version
    rollout.start_canary(lane, v2, 10, None)
    rollout.end_canary(Lane.objects.get(pk=lane.pk), None, reason="p95 3.1 s > 1.2 s", automatic=True)
    rollout.activate(Lane.objects.get(pk=lane.pk), v2, None)
    rollout.rollback(Lane.objects.get(pk=lane.pk), None)
    data = [d.payload["data"] for d in Delivery.objects.filter(endpoint=endpoint).order_by("id")]
    assert data == [
        {"lane": "fast-draft", "canary": "hooks-v2", "reason": "p95 3.1 s > 1.2 s"},
        {"lane": "fast-draft", "from": "hooks-v2", "to": v1.name},
    ]


@pytest.mark.django_db
def test_a_finished_experiment_is_announced_to_its_creators_team(demo_lanes, team, settings):
    endpoint = subscribe(team, events=["experiment.finished"])
    ada = make_user("ada", "admin", team)
    experiment = runner.create(
        ada,
        definitions.parse(
            "name: hooks\nprompts: [p]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
        ),
    )
    runner.pump(experiment.pk)
    Job.objects.filter(experiment_cell__experiment=experiment).update(state=Job.State.SUCCEEDED)
    assert not Delivery.objects.exists()
    runner.pump(experiment.pk)
    [delivery] = Delivery.objects.filter(endpoint=endpoint)
    assert delivery.event == "experiment.finished"
    assert delivery.payload["data"]["name"] == "hooks" and delivery.payload["data"]["arms"] == ["a", "b"]
