"""Every operation of /api/v1/ × every role, with personal tokens: who is served, who is refused (403),
and who must authenticate (401). Read from the OpenAPI document, so a new endpoint cannot be left out."""

from pathlib import Path

import pytest

from console.api import api
from experiments import definition as definitions
from experiments import runner
from lanes.actions import submit_brief
from lanes.models import Artifact, ModelVersion, Verification
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

# (method, path template) -> the least role that may use it.
MATRIX = {
    ("POST", "/jobs"): "creative",
    ("GET", "/jobs"): "creative",
    ("GET", "/jobs/{job_id}"): "creative",
    ("POST", "/jobs/{job_id}/cancel"): "creative",
    ("POST", "/jobs/{job_id}/rerender"): "creative",
    ("GET", "/jobs/{job_id}/images/{stage}.png"): "creative",
    ("GET", "/review"): "creative",
    ("POST", "/review/{verification_id}/{action}"): "creative",
    ("GET", "/experiments"): "creative",
    ("GET", "/experiments/{name}"): "creative",
    ("GET", "/experiments/{name}/results"): "creative",
    ("GET", "/teams/{name}/usage"): "creative",
    ("GET", "/lanes"): "ops",
    ("GET", "/lanes/{name}"): "ops",
    ("POST", "/lanes/{name}/mode"): "ops",
    ("PATCH", "/lanes/{name}/limits"): "ops",
    ("GET", "/policy"): "ops",
    ("GET", "/fleet/workers"): "ops",
    ("GET", "/fleet/gpus"): "ops",
    ("POST", "/lanes/{name}/activate"): "admin",
    ("POST", "/lanes/{name}/canary"): "admin",
    ("POST", "/lanes/{name}/canary/end"): "admin",
    ("POST", "/lanes/{name}/promote"): "admin",
    ("POST", "/lanes/{name}/rollback"): "admin",
    ("GET", "/lanes/{name}/shadow"): "admin",
    ("POST", "/lanes/{name}/shadow"): "ops",
    ("POST", "/lanes/{name}/shadow/stop"): "ops",
    ("GET", "/lanes/{name}/rollout"): "ops",
    ("PUT", "/lanes/{name}/rollout/plan"): "admin",
    ("POST", "/lanes/{name}/rollout"): "admin",
    ("POST", "/lanes/{name}/rollout/{action}"): "ops",
    ("PUT", "/policy"): "admin",
    ("GET", "/versions"): "admin",
    ("POST", "/versions"): "admin",
    ("GET", "/versions/{name}"): "admin",
    ("POST", "/versions/{name}/validate"): "admin",
    ("POST", "/versions/{name}/retire"): "admin",
    ("POST", "/experiments"): "admin",
    ("POST", "/experiments/{name}/{action}"): "admin",
    ("GET", "/webhooks"): "ops",
    ("POST", "/webhooks"): "ops",
    ("GET", "/webhooks/{endpoint_id}"): "ops",
    ("POST", "/webhooks/{endpoint_id}/rotate"): "ops",
    ("POST", "/webhooks/{endpoint_id}/enabled"): "ops",
    ("POST", "/webhooks/deliveries/{delivery_id}/redeliver"): "ops",
    ("DELETE", "/webhooks/{endpoint_id}"): "ops",  # last: it deletes the endpoint the others name
}
RANK = {None: -1, "creative": 0, "ops": 1, "admin": 2}
BODIES = {
    ("POST", "/jobs"): {"prompt": "poster", "intent": "draft"},
    ("POST", "/lanes/{name}/mode"): {"mode": "draining"},
    ("PATCH", "/lanes/{name}/limits"): {"hard_cap": 99},
    ("POST", "/lanes/{name}/activate"): {"version": "demo-tiny-sd-v1"},
    ("POST", "/lanes/{name}/canary"): {"version": "demo-tiny-sd-v1", "percent": 10},
    ("POST", "/lanes/{name}/shadow"): {"version": "demo-tiny-sd-v1", "percent": 10},
    ("PUT", "/lanes/{name}/rollout/plan"): {"steps": [{"percent": 10, "min_samples": 5}]},
    ("POST", "/lanes/{name}/rollout"): {"version": "demo-tiny-sd-v1"},
    ("PUT", "/policy"): {"yaml": "lanes: {}\n"},
    ("POST", "/versions"): {"name": "matrix-v9", "location": "nowhere"},
    ("POST", "/webhooks"): {"url": "http://127.0.0.1:9/new", "events": ["job.failed"]},
    ("POST", "/webhooks/{endpoint_id}/enabled"): {"enabled": False},
    ("POST", "/experiments"): {
        "definition": "name: m2\nprompts: [p]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
    },
}


def operations() -> set[tuple[str, str]]:
    paths = api.get_openapi_schema()["paths"]
    return {(method.upper(), path.removeprefix("/api/v1")) for path, ops in paths.items() for method in ops}


@pytest.fixture
def world(demo_lanes, users, media_root, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ("127.0.0.1",)  # registration checks the address; no DNS here
    experiment = runner.create(
        users["admin"],
        definitions.parse(
            "name: matrix\nprompts: [p]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
        ),
    )
    job = submit_brief(users["creative"], prompt="poster", intent="draft", expected_text="SALE")
    image = Path(settings.MEDIA_ROOT) / "artifacts" / "m.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG fake")
    artifact = Artifact.objects.create(job=job, path="artifacts/m.png", width=8, height=8, sha256="0", size_bytes=9)
    verification = Verification.objects.create(
        job=job, artifact=artifact, lane=job.lane, model_version=job.model_version, status="flagged"
    )
    endpoint = Endpoint.objects.create(team=job.team, url="https://hooks.example.com/in", events=["job.succeeded"])
    delivery = Delivery.objects.create(endpoint=endpoint, event="job.succeeded", payload={}, max_attempts=1)
    return {
        "endpoint_id": endpoint.pk, "delivery_id": delivery.pk, "team": job.team.name,
        "job_id": job.pk, "stage": "final", "verification_id": verification.pk, "action": "approve",
        "name": "fast-draft", "experiment": experiment.name, "version": ModelVersion.objects.first().name,
    }  # fmt: skip


def fill(path: str, values: dict) -> str:
    if path.startswith("/experiments/"):
        values = {**values, "name": values["experiment"], "action": "pause"}
    elif path.startswith("/teams/"):
        values = {**values, "name": values["team"]}
    elif path.startswith("/versions/"):
        values = {**values, "name": values["version"]}
    elif path.startswith("/lanes/") and "{action}" in path:
        values = {**values, "action": "pause"}
    return path.format(**values)


def test_the_matrix_names_every_operation():
    assert operations() == set(MATRIX)


@pytest.mark.parametrize("role", [None, "creative", "ops", "admin"])
def test_every_operation_answers_each_role_as_the_matrix_says(callers, world, role):
    caller = callers[role]
    problems = []
    for (method, template), least in MATRIX.items():
        path = fill(template, world)
        response = caller.get(path) if method == "GET" else caller.send(method, path, BODIES.get((method, template)))
        allowed = RANK[role] >= RANK[least]
        code = response.status_code
        if code >= 500:
            problems.append(f"{method} {template}: {code}")
        elif allowed and code in (401, 403):
            problems.append(f"{method} {template}: {role} refused ({code}) {response.content[:200]!r}")
        elif not allowed and role is None and code != 401:
            problems.append(f"{method} {template}: anonymous got {code}, not 401")
        elif not allowed and role is not None and code != 403:
            problems.append(f"{method} {template}: {role} got {code}, not 403")
        if code >= 400 and response["Content-Type"] != "application/problem+json":
            problems.append(f"{method} {template}: a {code} that is not a problem document")
    assert problems == []


def test_a_read_only_token_reads_but_never_writes(client, users, world):
    from accounts.models import ApiToken

    _, secret = ApiToken.issue(users["admin"], "dashboards", read_only=True)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get("/api/v1/lanes", **headers).status_code == 200
    refused = client.post(
        "/api/v1/lanes/fast-draft/mode", {"mode": "draining"}, content_type="application/json", **headers
    )
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
