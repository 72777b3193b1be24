"""Briefs and jobs through /api/v1/: the same submit, scoping and refusals as the console."""

import json
from pathlib import Path

import pytest
from django.conf import settings

from accounts.models import ApiToken, Team
from lanes import retention
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane
from tests.conftest import make_user
from tests.lanes.finished import finished_job

pytestmark = pytest.mark.django_db


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"]
    return body


def test_a_brief_is_submitted_and_answered_with_its_job_and_admission(demo_lanes, callers, users):
    response = callers["creative"].post("/jobs", {"prompt": "a red poster", "intent": "draft", "expected_text": "SALE"})
    assert response.status_code == 202, response.content
    body = response.json()
    job = Job.objects.get(pk=body["id"])
    assert job.owner == users["creative"] and job.team == users["creative"].member.team
    assert body["state"] == job.state == "queued"
    assert body["admission"]["decision"] == "admitted" and body["lane"] == job.lane.name
    assert body["version"] == job.model_version.name and body["expected_text"] == "SALE"
    assert response["Location"] == f"/api/v1/jobs/{job.pk}"
    assert callers["creative"].get(f"/jobs/{job.pk}").json()["id"] == job.pk


def test_overrides_are_held_to_the_lanes_bounds(demo_lanes, callers):
    lane = Lane.objects.get(name="fast-draft")
    body = problem(
        callers["creative"].post("/jobs", {"prompt": "p", "intent": "draft", "steps": lane.max_steps + 1}), 422
    )
    assert "steps" in body["errors"]
    ok = callers["creative"].post("/jobs", {"prompt": "p", "intent": "draft", "steps": lane.min_steps, "seed": 7})
    assert ok.status_code == 202 and ok.json()["steps"] == lane.min_steps and ok.json()["seed"] == 7


def test_past_the_hard_cap_a_brief_gets_429_with_retry_after(demo_lanes, callers):
    Lane.objects.filter(name="fast-draft").update(hard_cap=1, defer_depth=1, fallback=None)
    assert callers["creative"].post("/jobs", {"prompt": "one", "intent": "draft"}).status_code == 202
    refused = callers["creative"].post("/jobs", {"prompt": "two", "intent": "draft"})
    body = problem(refused, 429)
    assert int(refused["Retry-After"]) >= 1 and "Not accepted now" in body["detail"]
    assert Job.objects.filter(state=Job.State.REJECTED, prompt="two").exists()  # the refusal is on record


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": 5, "intent": "draft"}, "prompt"),  # wrong type
        ({"prompt": "p", "intent": "draft", "colour": "red"}, "colour"),  # unknown field
        ({"prompt": "p\x00", "intent": "draft"}, "prompt"),  # NUL byte
        ({"prompt": "p", "intent": "draft", "seed": 2**70}, "seed"),  # huge integer
        ({"prompt": "p", "intent": "draft", "priority": "urgent"}, "priority"),  # invalid enum
        ({"intent": "draft"}, "prompt"),  # missing
    ],
)
def test_bad_input_is_a_422_problem_naming_the_field(demo_lanes, callers, body, field):
    errors = problem(callers["creative"].post("/jobs", body), 422)["errors"]
    assert any(field in error["loc"] for error in errors), errors
    assert not Job.objects.exists()


def test_an_unknown_intent_and_a_body_that_is_not_json_are_refused(demo_lanes, callers):
    assert "intent" in problem(callers["creative"].post("/jobs", {"prompt": "p", "intent": "nope"}), 422)["errors"]
    raw = callers["creative"].client.post(
        "/api/v1/jobs", "{not json", content_type="application/json", **callers["creative"].headers()
    )
    assert raw.status_code in (400, 422) and raw["Content-Type"] == "application/problem+json"


def test_an_oversize_body_is_413(demo_lanes, callers, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = problem(callers["creative"].post("/jobs", {"prompt": "x" * 4096, "intent": "draft"}), 413)
    assert "2048" in body["detail"]


def test_missing_malformed_and_revoked_tokens_are_401(demo_lanes, client, users):
    assert problem(client.get("/api/v1/jobs"), 401)
    assert client.get("/api/v1/jobs").headers["WWW-Authenticate"].startswith("Bearer")
    assert problem(client.get("/api/v1/jobs", HTTP_AUTHORIZATION="Bearer nonsense"), 401)
    assert problem(client.get("/api/v1/jobs", HTTP_AUTHORIZATION="Basic Y2FzZXk6eA=="), 401)
    token, secret = ApiToken.issue(users["creative"], "old")
    assert client.get("/api/v1/jobs", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    token.revoke()
    assert problem(client.get("/api/v1/jobs", HTTP_AUTHORIZATION=f"Bearer {secret}"), 401)


def test_another_teams_job_does_not_exist_for_a_creative(demo_lanes, callers):
    agency = Team.objects.create(name="agency")
    other = submit_brief(make_user("sam", team=agency), prompt="their poster", intent="draft")
    assert problem(callers["creative"].get(f"/jobs/{other.pk}"), 404)
    assert problem(callers["creative"].post(f"/jobs/{other.pk}/cancel"), 404)
    assert problem(callers["creative"].get(f"/jobs/{2**70}"), 422)  # past any id there can be
    assert callers["creative"].get("/jobs").json()["items"] == []
    assert [j["id"] for j in callers["ops"].get("/jobs").json()["items"]] == [other.pk]


def test_jobs_are_listed_newest_first_with_filters_and_a_cursor(demo_lanes, callers, users):
    jobs = [submit_brief(users["creative"], prompt=f"p{i}", intent="draft") for i in range(5)]
    preview = submit_brief(users["creative"], prompt="prev", intent="preview")
    first = callers["creative"].get("/jobs", limit=2, intent="draft").json()
    assert [j["id"] for j in first["items"]] == [jobs[4].pk, jobs[3].pk]
    second = callers["creative"].get("/jobs", limit=2, intent="draft", cursor=first["next_cursor"]).json()
    third = callers["creative"].get("/jobs", limit=2, intent="draft", cursor=second["next_cursor"]).json()
    assert [j["id"] for j in second["items"] + third["items"]] == [jobs[2].pk, jobs[1].pk, jobs[0].pk]
    assert third["next_cursor"] is None
    assert [j["id"] for j in callers["creative"].get("/jobs", lane=preview.lane.name).json()["items"]] == [preview.pk]
    assert problem(callers["creative"].get("/jobs", state="sleeping"), 422)
    assert problem(callers["creative"].get("/jobs", cursor="abc"), 422)
    assert problem(callers["creative"].get("/jobs", team="studio"), 403)  # creatives see their own team anyway
    assert len(callers["ops"].get("/jobs", team="studio").json()["items"]) == 6


def test_cancel_rerender_and_image_download(demo_lanes, callers, users, media_root):
    job = submit_brief(users["creative"], prompt="poster", intent="draft", expected_text="SALE")
    cancelled = callers["creative"].post(f"/jobs/{job.pk}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert "only queued or deferred" in problem(callers["creative"].post(f"/jobs/{job.pk}/cancel"), 409)["detail"]

    again = callers["creative"].post(f"/jobs/{job.pk}/rerender", {"intent": "preview"})
    assert again.status_code == 202
    new = Job.objects.get(pk=again.json()["id"])
    assert new.rerender_of == job and new.intent == "preview" and new.prompt == job.prompt

    path = Path(settings.MEDIA_ROOT) / "artifacts" / "a.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    Artifact.objects.create(job=job, path="artifacts/a.png", width=8, height=8, sha256="ab", size_bytes=8)
    listed = callers["creative"].get(f"/jobs/{job.pk}").json()["images"]
    assert [i["stage"] for i in listed] == ["final"]
    image = callers["creative"].get(listed[0]["url"].removeprefix("/api/v1"))
    assert image.status_code == 200 and image["Content-Type"] == "image/png" and image.content == path.read_bytes()
    assert problem(callers["creative"].get(f"/jobs/{job.pk}/images/draft.png"), 404)


def test_responses_are_json_documents_the_spec_describes(demo_lanes, callers):
    job = json.loads(callers["creative"].post("/jobs", {"prompt": "p", "intent": "draft"}).content)
    spec = callers["creative"].client.get("/api/v1/openapi.json").json()
    schema = spec["components"]["schemas"]["JobOut"]
    assert set(schema["required"]) <= set(job)


def test_a_rerender_is_the_callers_job_in_the_callers_team(demo_lanes, callers, users):
    mate = make_user("mate", team=users["creative"].member.team)
    original = submit_brief(mate, prompt="their poster", intent="draft")
    again = callers["creative"].post(f"/jobs/{original.pk}/rerender")
    assert again.status_code == 202
    new = Job.objects.get(pk=again.json()["id"])
    assert new.owner == users["creative"] and new.rerender_of == original and new.team == original.team


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "yesterday", "0.5"])
def test_a_since_past_the_calendar_or_not_iso_is_422(demo_lanes, callers, since):
    assert problem(callers["creative"].get("/jobs", since=since), 422)


def test_another_teams_review_rerender_and_experiment_do_not_exist_for_a_creative(demo_lanes, callers, media_root):
    from experiments import definition as definitions
    from experiments import runner
    from lanes.models import Verification

    agency = Team.objects.create(name="agency")
    sam = make_user("sam", team=agency)
    theirs = submit_brief(sam, prompt="their poster", intent="draft", expected_text="SALE")
    artifact = Artifact.objects.create(job=theirs, path="a.png", width=8, height=8, sha256="0", size_bytes=1)
    flag = Verification.objects.create(job=theirs, artifact=artifact, status="flagged")
    experiment = runner.create(
        make_user("boss", "admin", agency),
        definitions.parse(
            "name: theirs\nprompts: [p]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
        ),
    )
    jobs_before = Job.objects.count()
    assert problem(callers["creative"].post(f"/review/{flag.pk}/approve"), 404)
    assert problem(callers["creative"].post(f"/review/{flag.pk}/rerender"), 404)
    assert problem(callers["creative"].post(f"/jobs/{theirs.pk}/rerender"), 404)
    assert problem(callers["creative"].get(f"/experiments/{experiment.name}/results"), 404)
    assert callers["creative"].get("/review").json() == []
    flag.refresh_from_db()
    assert flag.decision == "" and Job.objects.count() == jobs_before


def test_a_pruned_image_is_410_gone_and_the_job_says_when(
    demo_lanes, callers, users, media_root, django_capture_on_commit_callbacks
):
    job = finished_job(users["creative"], days_old=45)
    kept = finished_job(users["creative"], days_old=1, seed=2)
    with django_capture_on_commit_callbacks(execute=True):
        assert retention.prune(days=30).artifacts == 1

    (image,) = callers["creative"].get(f"/jobs/{job.pk}").json()["images"]
    assert image["stage"] == "final" and image["pruned_at"] and image["sha256"]
    body = problem(callers["creative"].get(image["url"].removeprefix("/api/v1")), 410)
    assert body["title"] == "Gone"
    assert body["detail"] == f"The final image of job {job.pk} was pruned after 45 days (ARTIFACT_RETENTION_DAYS)."
    assert problem(callers["creative"].get(f"/jobs/{job.pk}/images/draft.png"), 404)  # never rendered: not gone
    # Another team's pruned image is still a 404: 410 tells nothing about jobs a caller may not see.
    outsider = make_user("zed", "creative", Team.objects.create(name="elsewhere"))
    outsider_token = ApiToken.issue(outsider, "script")[1]
    other = callers["creative"].client.get(image["url"], HTTP_AUTHORIZATION=f"Bearer {outsider_token}")
    assert other.status_code == 404

    (fresh,) = callers["creative"].get(f"/jobs/{kept.pk}").json()["images"]
    assert fresh["pruned_at"] is None
    assert callers["creative"].get(fresh["url"].removeprefix("/api/v1")).status_code == 200
    spec = callers["creative"].client.get("/api/v1/openapi.json").json()
    assert "410" in spec["paths"]["/api/v1/jobs/{job_id}/images/{stage}.png"]["get"]["responses"]
