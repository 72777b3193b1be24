"""Lanes through the API: live figures, and the revision as ETag / If-Match against stale writes."""

import pytest
from django.utils import timezone

from lanes.demo import seed_demo_v2
from lanes.models import AuditEvent, Lane, ModelVersion

pytestmark = pytest.mark.django_db


def test_lanes_are_listed_with_live_counts_and_an_etag(demo_lanes, callers):
    listed = callers["ops"].get("/lanes").json()
    assert {lane["name"] for lane in listed} == set(Lane.objects.values_list("name", flat=True))
    one = callers["ops"].get("/lanes/fast-draft")
    lane = Lane.objects.get(name="fast-draft")
    assert one["ETag"] == f'"{lane.revision}"' and one.json()["revision"] == lane.revision
    assert one.json()["queued"] == 0 and one.json()["active_version"] == lane.active_version.name
    assert callers["ops"].get("/lanes", window="1h").status_code == 200
    assert callers["ops"].get("/lanes", window="1y").status_code == 422


def test_a_write_with_a_stale_if_match_is_412_and_changes_nothing(demo_lanes, callers):
    etag = callers["ops"].get("/lanes/fast-draft")["ETag"]
    first = callers["ops"].send("PATCH", "/lanes/fast-draft/limits", {"hard_cap": 70}, headers={"If-Match": etag})
    assert first.status_code == 200 and first["ETag"] != etag and first.json()["hard_cap"] == 70
    stale = callers["ops"].send("PATCH", "/lanes/fast-draft/limits", {"hard_cap": 80}, headers={"If-Match": etag})
    assert stale.status_code == 412 and stale["Content-Type"] == "application/problem+json"
    assert Lane.objects.get(name="fast-draft").hard_cap == 70
    garbage = callers["ops"].send("PATCH", "/lanes/fast-draft/limits", {"hard_cap": 80}, headers={"If-Match": "x"})
    assert garbage.status_code == 412
    assert AuditEvent.objects.filter(action="lane.limits").count() == 1


def test_modes_and_refusals_say_why(demo_lanes, callers):
    drained = callers["ops"].post("/lanes/preview/mode", {"mode": "draining"})
    assert drained.status_code == 200 and drained.json()["lane"]["mode"] == "draining"
    again = callers["ops"].post("/lanes/preview/mode", {"mode": "draining"})
    assert again.status_code == 409 and "already draining" in again.json()["detail"]
    assert callers["ops"].post("/lanes/preview/mode", {"mode": "asleep"}).status_code == 422
    assert callers["ops"].post("/lanes/nope/mode", {"mode": "enabled"}).status_code == 404
    nothing = callers["ops"].send("PATCH", "/lanes/preview/limits", {})
    assert nothing.status_code == 422


def test_admins_canary_promote_and_roll_back(demo_lanes, callers):
    v2 = seed_demo_v2()
    ModelVersion.objects.filter(pk=v2.pk).update(status="validated", validated_at=timezone.now())
    lane = Lane.objects.get(name="fast-draft")
    canary = callers["admin"].post("/lanes/fast-draft/canary", {"version": v2.name, "percent": 20})
    assert canary.status_code == 200, canary.content
    assert canary.json()["canary_version"] == v2.name and canary.json()["canary_percent"] == 20
    assert callers["admin"].post("/lanes/fast-draft/promote").json()["active_version"] == v2.name
    assert callers["admin"].post("/lanes/fast-draft/rollback").json()["active_version"] == lane.active_version.name
    unknown = callers["admin"].post("/lanes/fast-draft/activate", {"version": "nope"})
    assert unknown.status_code == 422 and unknown.json()["errors"] == {"version": "Unknown version."}
