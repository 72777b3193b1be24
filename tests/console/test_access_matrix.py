"""Every URL of the console × every role: who gets the page, who is refused, who must log in."""

from pathlib import Path

import pytest
from django.conf import settings
from django.shortcuts import resolve_url
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import ApiToken, Team
from experiments import definition as definitions
from experiments import runner
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane, ModelVersion, Verification, Worker
from tests.conftest import make_user
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

# URL name -> (method, the least role that may use it; None: anyone).
MATRIX = {
    "home": ("GET", None),
    "brief-new": ("GET", "creative"),
    "job-list": ("GET", "creative"),
    "job-detail": ("GET", "creative"),
    "job-card": ("GET", "creative"),
    "job-cancel": ("POST", "creative"),
    "job-image": ("GET", "creative"),
    "review": ("GET", "creative"),
    "review-bulk": ("POST", "creative"),
    "review-action": ("POST", "creative"),
    "dashboard": ("GET", "ops"),
    "dashboard-samples": ("GET", "ops"),
    "metrics": ("GET", "ops"),
    "healthz": ("GET", None),
    "policy": ("GET", "ops"),
    "policy-yaml": ("GET", "ops"),
    "lane-list": ("GET", "ops"),
    "team-list": ("GET", "ops"),
    "team-quota": ("POST", "ops"),
    "lane-detail": ("GET", "ops"),
    "lane-mode": ("POST", "ops"),
    "lane-limits": ("POST", "ops"),
    "lane-dismiss-notice": ("POST", "ops"),
    "worker-consume": ("POST", "ops"),
    "workers-reload": ("POST", "ops"),
    "lane-adapter-link": ("POST", "ops"),
    "lane-adapter-unlink": ("POST", "ops"),
    "audit": ("GET", "ops"),
    "lane-activate": ("POST", "admin"),
    "lane-canary": ("POST", "admin"),
    "lane-end-canary": ("POST", "admin"),
    "lane-promote": ("POST", "admin"),
    "lane-rollback": ("POST", "admin"),
    "lane-shadow-start": ("POST", "ops"),
    "lane-shadow-stop": ("POST", "ops"),
    "lane-shadow": ("GET", "admin"),
    "shadow-image": ("GET", "admin"),
    "lane-rollout-plan": ("POST", "admin"),
    "lane-rollout-start": ("POST", "admin"),
    "lane-rollout-pause": ("POST", "ops"),
    "lane-rollout-resume": ("POST", "ops"),
    "lane-rollout-skip": ("POST", "ops"),
    "lane-rollout-abort": ("POST", "ops"),
    "version-list": ("GET", "admin"),
    "version-new": ("GET", "admin"),
    "version-detail": ("GET", "admin"),
    "version-smoke": ("GET", "admin"),
    "version-validate": ("POST", "admin"),
    "version-retire": ("POST", "admin"),
    "version-adapter-new": ("POST", "admin"),
    "experiment-list": ("GET", "creative"),
    "experiment-detail": ("GET", "creative"),
    "experiment-export": ("GET", "creative"),
    "experiment-new": ("GET", "admin"),
    "experiment-control": ("POST", "admin"),
    "experiment-canary": ("POST", "admin"),
    "token-list": ("GET", "creative"),
    "token-revoke": ("POST", "creative"),
    "webhook-list": ("GET", "ops"),
    "webhook-new": ("GET", "ops"),
    "webhook-detail": ("GET", "ops"),
    "webhook-rotate": ("POST", "ops"),
    "webhook-enabled": ("POST", "ops"),
    "webhook-redeliver": ("POST", "ops"),
    "webhook-delete": ("POST", "ops"),  # last: it deletes the endpoint the others name
}
# Django's own views: the login form, logout, and the admin site (which admits admins only).
NOT_IN_MATRIX = {"login", "logout"}
RANK = {None: -1, "creative": 0, "ops": 1, "admin": 2}


def named_urls(patterns=None, prefix="") -> set[str]:
    names = set()
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace in ("admin", "api-v1"):  # the API has its own matrix: tests/api/test_access_matrix.py
                continue
            names |= named_urls(entry.url_patterns)
        elif isinstance(entry, URLPattern) and entry.name:
            names.add(entry.name)
    return names


@pytest.fixture
def world(demo_lanes, media_root):
    """One object of each kind for the URLs to name: the creative's job, image and flag, a worker, a version."""
    team = Team.objects.create(name="studio")
    users = {
        "creative": make_user("casey", "creative", team),
        "ops": make_user("olive", "ops", team),  # webhooks are managed by ops of their own team
        "admin": make_user("ada", "admin", team),
    }

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
    version = ModelVersion.objects.get(name="demo-tiny-sd-v1")
    ModelVersion.objects.filter(pk=version.pk).update(smoke_image="artifacts/m.png")
    worker = Worker.objects.create(ident="h:1", hostname="h", pid=1)  # no node name: control refuses at once
    endpoint = Endpoint.objects.create(team=team, url="https://hooks.example.com/in", events=["job.succeeded"])
    delivery = Delivery.objects.create(endpoint=endpoint, event="job.succeeded", payload={}, max_attempts=1)
    kwargs = {
        "job-detail": {"job_id": job.pk},
        "job-card": {"job_id": job.pk},
        "job-cancel": {"job_id": job.pk},
        "job-image": {"job_id": job.pk, "stage": "final"},
        "review-action": {"verification_id": verification.pk, "action": "approve"},
        "worker-consume": {"name": "fast-draft", "worker_id": worker.pk},
        "team-quota": {"pk": team.pk},
        "lane-adapter-unlink": {"name": "fast-draft", "adapter_id": 1},
        "shadow-image": {"name": "fast-draft", "job_id": job.pk, "stage": "final"},
        "experiment-detail": {"name": experiment.name},
        "experiment-export": {"name": experiment.name, "fmt": "csv"},
        "experiment-control": {"name": experiment.name, "action": "pause"},
        "experiment-canary": {"name": experiment.name},
        "token-revoke": {"token_id": ApiToken.issue(users["creative"], "matrix")[0].pk},
        "webhook-detail": {"endpoint_id": endpoint.pk},
        "webhook-rotate": {"endpoint_id": endpoint.pk},
        "webhook-enabled": {"endpoint_id": endpoint.pk},
        "webhook-delete": {"endpoint_id": endpoint.pk},
        "webhook-redeliver": {"delivery_id": delivery.pk},
    }
    for name in MATRIX:
        if name.startswith("lane-") and name not in ("lane-list",):
            kwargs.setdefault(name, {"name": "fast-draft"})
        if name.startswith("version-") and name not in ("version-list", "version-new"):
            kwargs.setdefault(name, {"name": version.name})
    return users, kwargs


def test_the_matrix_names_every_url():
    assert named_urls() - NOT_IN_MATRIX == set(MATRIX)


@pytest.mark.parametrize("role", [None, "creative", "ops", "admin"])
def test_every_url_answers_each_role_as_the_matrix_says(client, world, role):
    users, kwargs = world
    if role is not None:
        client.force_login(users[role])
    problems = []
    for name, (method, least) in MATRIX.items():
        url = reverse(name, kwargs=kwargs.get(name))
        response = client.get(url) if method == "GET" else client.post(url)
        allowed = RANK[role] >= RANK[least]
        to_login = response.status_code == 302 and response["Location"].startswith(resolve_url(settings.LOGIN_URL))
        if response.status_code >= 500:
            problems.append(f"{name}: {response.status_code}")
        elif allowed and (response.status_code in (401, 403) or to_login):
            problems.append(f"{name}: {role} refused ({response.status_code})")
        elif not allowed and role is None and not (to_login or response.status_code == 401):
            problems.append(f"{name}: anonymous not sent to log in ({response.status_code})")
        elif not allowed and role is not None and response.status_code not in (401, 403):
            problems.append(f"{name}: {role} not refused ({response.status_code})")
    assert problems == []


def test_a_creative_sees_their_teams_jobs_but_not_another_teams(client, demo_lanes):
    studio, agency = Team.objects.create(name="studio"), Team.objects.create(name="agency")
    casey, robin, sam = make_user("casey", team=studio), make_user("robin", team=studio), make_user("sam", team=agency)
    theirs = submit_brief(robin, prompt="team poster", intent="draft")
    other = submit_brief(sam, prompt="other team's poster", intent="draft")
    assert theirs.team == studio and other.team == agency
    client.force_login(casey)
    assert client.get(reverse("job-detail", args=[theirs.pk])).status_code == 200
    assert client.get(reverse("job-detail", args=[other.pk])).status_code == 404
    listing = client.get(reverse("job-list")).text
    assert "team poster" in listing and "other team" not in listing
    assert set(Job.objects.visible_to(casey)) == {theirs}


def test_a_refusal_is_a_page_that_says_why(client, world):
    users, _ = world
    client.force_login(users["creative"])
    page = client.get(reverse("lane-list"))
    assert page.status_code == 403
    assert "This page is for ops and admins." in page.text and "Signed in as casey" in page.text


def test_the_admin_site_opens_to_admins_only(client, world):
    users, _ = world
    for role, status in (("creative", 302), ("ops", 302), ("admin", 200)):
        client.force_login(users[role])
        assert client.get("/admin/").status_code == status, role
    assert Lane.objects.exists()
