"""Shadow renders through the API: start (ops), the comparison (admins), stop; bad input is a 422 that
applies nothing; shadow jobs are in no job listing."""

from pathlib import Path

import pytest
from django.conf import settings

from lanes.demo import DEMO_CHECKPOINT
from lanes.models import AuditEvent, Job, Lane, ModelVersion, Shadow, hash_checkpoint
from tests.experiments.shadowed import make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def v2(demo_lanes):
    return ModelVersion.objects.create(
        name="api-shadow", location=DEMO_CHECKPOINT,
        content_hash=hash_checkpoint(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT), status="validated",
    )  # fmt: skip


def test_ops_start_a_shadow_admins_read_its_comparison_and_it_stops(v2, callers, users):
    started = callers["ops"].post("/lanes/fast-draft/shadow", {"version": "api-shadow", "percent": 100})
    assert started.status_code == 200, started.content
    body = started.json()
    assert (body["version"], body["percent"], body["running"], body["started_by"]) == ("api-shadow", 100, True, "olive")
    assert body["pairs"] == 0 and body["gate"] == {
        "passed": False,
        "why": "too few finished pairs to judge (0, need 20).",
    }
    assert started["ETag"] == f'"{Lane.objects.get(name="fast-draft").revision}"'

    copies = make_pairs(users["creative"], [("succeeded", 2.0, 2.0, "passed", 1.0)] * 3)
    assert callers["ops"].get("/lanes/fast-draft/shadow").status_code == 403
    read = callers["admin"].get("/lanes/fast-draft/shadow").json()
    assert read["pairs"] == read["finished_pairs"] == 3
    assert {p["shadow"]["job"] for p in read["recent_pairs"]} == {c.pk for c in copies}
    pair = read["recent_pairs"][0]
    assert pair["production"]["run_s"] == 1.0 and pair["shadow"]["run_s"] == 2.0 and pair["seed"] == 102
    assert [a["arm"] for a in read["arms"]] == ["production", "shadow"] and read["arms"][1]["run_p95_s"] == 2.0
    assert [c["metric"] for c in read["comparisons"]] == ["run time", "GPU-seconds", "pass rate", "edit distance"]
    assert read["comparisons"][0]["estimate"] is None  # 3 pairs: too few for the paired statistics (6)

    stopped = callers["ops"].post("/lanes/fast-draft/shadow/stop")
    assert stopped.status_code == 200 and stopped.json()["running"] is False
    assert stopped.json()["stopped_reason"] == "stopped through the API"
    again = callers["ops"].post("/lanes/fast-draft/shadow/stop")
    assert again.status_code == 422 and "has no shadow running" in again.json()["detail"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"version": "api-shadow", "percent": 0}, "percent"),
        ({"version": "api-shadow", "percent": 101}, "percent"),
        ({"version": "api-shadow", "percent": "10"}, "percent"),
        ({"version": "api-shadow"}, "percent"),
        ({"version": "api-shadow", "percent": 10, "share": 5}, "share"),
        ({"version": "no-such-version", "percent": 10}, "No model version named 'no-such-version'."),
        ({"version": "demo-tiny-sdxl-refiner-v1", "percent": 10}, "cannot render from a prompt"),
        ({"version": "demo-tiny-sd-v1", "percent": 10}, "already serves lane fast-draft"),
    ],
)
def test_bad_shadow_requests_are_422_and_apply_nothing(v2, callers, body, said):
    revision = Lane.objects.get(name="fast-draft").revision
    response = callers["ops"].post("/lanes/fast-draft/shadow", body)
    assert response.status_code == 422 and response["Content-Type"] == "application/problem+json"
    assert said in response.content.decode()
    assert not Shadow.objects.exists() and Lane.objects.get(name="fast-draft").revision == revision
    assert not AuditEvent.objects.filter(action__startswith="shadow.").exists()


def test_a_second_shadow_and_a_stale_if_match_are_refused(v2, callers):
    etag = callers["ops"].get("/lanes/fast-draft")["ETag"]
    assert callers["ops"].post("/lanes/fast-draft/shadow", {"version": "api-shadow", "percent": 5}).status_code == 200
    second = callers["admin"].post("/lanes/fast-draft/shadow", {"version": "api-shadow", "percent": 50})
    assert second.status_code == 422 and "already shadowed by api-shadow" in second.json()["detail"]
    stale = callers["ops"].send("POST", "/lanes/fast-draft/shadow/stop", headers={"If-Match": etag})
    assert stale.status_code == 412
    assert Shadow.objects.get().percent == 5 and Shadow.objects.get().is_running


def test_creatives_can_neither_start_nor_read_shadows_nor_find_shadow_jobs(v2, callers, users):
    assert (
        callers["creative"].post("/lanes/fast-draft/shadow", {"version": "api-shadow", "percent": 5}).status_code == 403
    )
    callers["ops"].post("/lanes/fast-draft/shadow", {"version": "api-shadow", "percent": 100})
    copies = make_pairs(users["creative"], [("succeeded", 1.0, 1.0, "passed", 1.0)] * 2)
    assert callers["creative"].get("/lanes/fast-draft/shadow").status_code == 403
    for role in ("creative", "admin"):
        listed = {job["id"] for job in callers[role].get("/jobs").json()["items"]}
        assert listed == {c.shadow_of_id for c in copies}
        assert all(callers[role].get(f"/jobs/{c.pk}").status_code == 404 for c in copies)
    assert Job.objects.filter(shadow_of__isnull=False).count() == 2
