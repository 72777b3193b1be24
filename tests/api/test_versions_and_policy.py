"""Versions, the routing policy and experiments through the API: the registry's checks, as problems."""

from pathlib import Path

import pytest
from django.conf import settings

from lanes import registry
from lanes.models import AuditEvent, ModelVersion, fleet, hash_checkpoint

pytestmark = pytest.mark.django_db


def test_registering_a_bad_checkpoint_is_a_422_naming_the_field(demo_lanes, callers):
    missing = callers["admin"].post("/versions", {"name": "v9", "location": "no/such/folder"})
    assert missing.status_code == 422 and "location" in missing.json()["errors"]
    too_long = callers["admin"].post("/versions", {"name": "v9", "location": "0" * 450})
    assert too_long.status_code == 422 and "cannot be read" in too_long.json()["errors"]["location"]
    assert (
        callers["admin"].post("/versions", {"name": "v9", "location": "x", "max_concurrency": "4"}).status_code == 422
    )
    assert not ModelVersion.objects.filter(name="v9").exists()


def test_a_checkpoint_is_registered_detected_and_queued_for_validation(demo_lanes, callers, monkeypatch):
    expected = hash_checkpoint(Path(settings.MODELS_ROOT) / "demo-tiny-sd")

    def no_hashing_in_the_request(*args, **kwargs):
        raise AssertionError("registration hashed the checkpoint")

    with monkeypatch.context() as patched:
        patched.setattr(fleet, "hash_checkpoint", no_hashing_in_the_request)  # what ModelVersion.compute_hash calls
        patched.setattr(registry, "hash_checkpoint", no_hashing_in_the_request)
        created = callers["admin"].post("/versions", {"name": "again", "location": "demo-tiny-sd"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["family"] == "sd15" and body["status"] == "staged" and body["url"] == "/api/v1/versions/again"
    assert (body["content_hash"], body["hash_bytes_done"], body["hash_bytes_total"]) == ("", 0, 0)
    assert registry.validate(ModelVersion.objects.get(name="again").pk, "test") == "validated"
    validated = callers["admin"].get("/versions/again").json()
    assert validated["content_hash"] == expected and validated["status"] == "validated"
    assert validated["hash_bytes_done"] == validated["hash_bytes_total"] > 0
    retired = callers["admin"].post("/versions/again/retire")
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    assert callers["admin"].post("/versions/again/retire").status_code == 409


def test_the_policy_round_trips_and_a_stale_digest_is_409(demo_lanes, callers):
    current = callers["ops"].get("/policy").json()
    applied = callers["admin"].send("PUT", "/policy", {"yaml": current["yaml"], "based_on": current["digest"]})
    assert applied.status_code == 200 and applied.json()["digest"] == current["digest"]
    callers["ops"].send("PATCH", "/lanes/preview/limits", {"hard_cap": 77})
    stale = callers["admin"].send("PUT", "/policy", {"yaml": current["yaml"], "based_on": current["digest"]})
    assert stale.status_code == 409 and "changed since you loaded it" in stale.json()["detail"]
    broken = callers["admin"].send("PUT", "/policy", {"yaml": "lanes: [\n"})
    assert broken.status_code == 422 and broken.json()["errors"]
    assert AuditEvent.objects.filter(action="lane.limits").count() == 1


def test_a_policy_dry_run_answers_the_changes_and_applies_nothing(demo_lanes, callers):
    current = callers["ops"].get("/policy").json()
    partial = "routes:\n  - {name: solo, model: demo-tiny-sd-v1}\nintents:\n  draft: solo\n"
    dry = callers["admin"].send("PUT", "/policy?dry_run=true", {"yaml": partial, "based_on": current["digest"]})
    assert dry.status_code == 200, dry.content
    body = dry.json()
    assert body["applied"] is False and body["digest"] == current["digest"]
    changes = body["changes"]
    assert changes["added_lanes"] == ["solo"] and "fast-draft" in changes["disabled_lanes"]
    assert "final" in changes["removed_intents"] and changes["changed_intents"] == {"draft": ["lane", "label"]}
    assert changes["unconsumed_lanes"] == ["solo"]
    assert callers["ops"].get("/policy").json() == current  # nothing applied
    assert callers["admin"].send("PUT", "/policy?dry_run=maybe", {"yaml": partial}).status_code == 422
    applied = callers["admin"].send("PUT", "/policy", {"yaml": partial, "based_on": current["digest"]}).json()
    assert applied["applied"] is True and applied["changes"] == changes and applied["digest"] != current["digest"]


def test_an_experiment_is_created_from_yaml_and_its_results_read(demo_lanes, callers):
    definition = "name: ab\nprompts: [p, q]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
    created = callers["admin"].post("/experiments", {"definition": definition})
    assert created.status_code == 201 and created.json()["jobs_total"] == 4
    results = callers["creative"].get("/experiments/ab/results").json()
    assert (
        results["baseline"] == "a"
        and len(results["cells"]) == 4
        and [s["arm"] for s in results["summary"]] == ["a", "b"]
    )
    assert callers["creative"].get("/experiments/ab/results", baseline="zz").status_code == 422
    bad = callers["admin"].post("/experiments", {"definition": "name: ab\nprompts: []\n"})
    assert bad.status_code == 422 and any("line" in e for e in bad.json()["errors"].values())
    assert callers["admin"].post("/experiments/ab/pause").json()["state"] == "paused"
    assert callers["admin"].post("/experiments/ab/pause").status_code == 409


@pytest.mark.parametrize("path, field", [("/policy", "yaml"), ("/experiments", "definition")])
def test_a_document_nested_thousands_deep_is_a_422_not_a_crash(demo_lanes, callers, path, field):
    deep = "x: " + "[" * 5000
    response = callers["admin"].send("PUT" if path == "/policy" else "POST", path, {field: deep})
    assert response.status_code == 422 and "nests deeper" in str(response.json()["errors"])
    fifty = "lanes: " + "[" * 100 + "]" * 100 + "\n"
    response = callers["admin"].send("PUT" if path == "/policy" else "POST", path, {field: fifty})
    assert response.status_code == 422
