"""The console on a phone: at 390×844 every page each role can open fits without horizontal
scroll, with realistic data on it, and the review actions are big enough to tap."""

import pytest
from django.urls import reverse

from accounts.models import ApiToken, Team
from experiments import definition as definitions
from experiments import runner
from lanes import control
from lanes.models import Artifact, Lane, ModelVersion, TeamQuota, Verification
from lanes.typeset import render
from tests.conftest import make_user
from tests.lanes.finished import finished_job
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
SCORES = {
    "scores": [
        {"expected": "SUMMER SALE — EVERYTHING HALF PRICE", "read": "SUMMFR SAIE", "similarity": 0.41, "passed": False,
         "box": [[10, 10], [230, 10], [230, 50], [10, 50]], "edit_distance": 0.59},
    ],
    "lines": [{"text": "SUMMFR SAIE", "score": 0.9, "box": [[10, 10], [230, 10], [230, 50], [10, 50]]}],
}  # fmt: skip


def seed_world(media_root):
    """One of everything a page lists: jobs with images, a flag, an experiment, a version, audit
    entries, a webhook with a delivery, API tokens, a team quota with every limit (its usage on the
    home page and the Teams page) and a team without one — with long names where users type them."""
    team = Team.objects.create(name="studio")
    users = {
        role: make_user(name, role, team) for role, name in (("creative", "casey"), ("ops", "olive"), ("admin", "ada"))
    }
    creative = users["creative"]
    long_prompt = "A midsummer poster for the flagship store's seasonal clearance with a neon sign and palm trees"
    jobs = [finished_job(creative, prompt=long_prompt, seed=seed, expected_text="SUMMER SALE") for seed in (1, 2, 3)]
    finished_job(creative, prompt="final render of the hero banner", intent="final", seed=4)
    flagged = jobs[0]
    artifact = Artifact.objects.get(job=flagged)  # a wide image, as a final render is
    render("SUMMFR SAIE", size=(512, 256), font_size=40).save(media_root / artifact.path)
    Artifact.objects.filter(pk=artifact.pk).update(width=512, height=256)
    Verification.objects.create(
        job=flagged, artifact=artifact, lane=flagged.lane, model_version=flagged.model_version,
        expected=["SUMMER SALE — EVERYTHING HALF PRICE"], status="flagged",
        reason="mismatch: expected 'SUMMER SALE — EVERYTHING HALF PRICE', read 'SUMMFR SAIE' (similarity 0.41)",
        details=SCORES,
    )  # fmt: skip
    experiment = runner.create(
        users["admin"],
        definitions.parse(
            "name: phone-ab\nprompts: [a poster with a very long prompt that goes on and on]\n"
            "arms:\n  - {name: fast, lane: fast-draft}\n  - {name: small, lane: preview}\n"
        ),
    )
    lane = Lane.objects.get(name="fast-draft")
    control.update_limits(lane, {"max_concurrency": 2, "defer_depth": 4, "hard_cap": 8}, users["ops"])  # an audit entry
    endpoint = Endpoint.objects.create(
        team=team,
        url="https://hooks.example.com/a/very/long/path/for/the/receiving/end/of/laneway",
        events=["job.succeeded"],
    )
    Delivery.objects.create(endpoint=endpoint, event="job.succeeded", payload={"job": flagged.pk}, max_attempts=1)
    for user in users.values():
        ApiToken.issue(user, "the build server that posts briefs overnight")
    version = ModelVersion.objects.get(name="demo-tiny-sd-v1")
    # Last: the quota denies a lane the jobs above ran on.
    quota = TeamQuota.objects.create(
        team=team, weight=2.0, max_concurrent_soft=4, max_concurrent_hard=8, gpu_seconds_day_soft=36_000,
        gpu_seconds_day_hard=72_000, spend_month_soft=1_500.0, spend_month_hard=2_500.0,
    )  # fmt: skip
    quota.denied_lanes.set([Lane.objects.get(name="final-render")])
    Team.objects.create(name="the seasonal campaigns team for the northern region")
    return {
        "job": flagged.pk,
        "experiment": experiment.name,
        "lane": lane.name,
        "version": version.name,
        "endpoint": endpoint.pk,
    }


def pages_for(role: str, ids: dict) -> list[str]:
    pages = [
        reverse("home"),
        reverse("job-list"),
        reverse("job-detail", args=[ids["job"]]),
        reverse("brief-new"),
        reverse("review"),
        reverse("experiment-list"),
        reverse("experiment-detail", args=[ids["experiment"]]),
        reverse("token-list"),
    ]
    if role in ("ops", "admin"):
        pages += [
            reverse("dashboard"),
            reverse("lane-list"),
            *(reverse("lane-detail", args=[lane.name]) for lane in Lane.objects.order_by("name")),
            reverse("policy"),
            reverse("webhook-list"),
            reverse("webhook-new"),
            reverse("webhook-detail", args=[ids["endpoint"]]),
            reverse("audit"),
            reverse("team-list"),
        ]
    if role == "admin":
        pages += [
            reverse("version-list"),
            reverse("version-new"),
            reverse("version-detail", args=[ids["version"]]),
            reverse("experiment-new"),
        ]
    return pages


def overflow(page) -> tuple[int, int]:
    return page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")


def test_the_login_page_fits_a_phone(live_server_url, browser):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.goto(f"{live_server_url}/login/")
    scroll, client = overflow(page)
    context.close()
    assert scroll <= client


@pytest.mark.parametrize("role", ["creative", "ops", "admin"])
def test_every_page_fits_a_390px_phone_for_each_role(role, demo_lanes, media_root, live_server_url, browser):
    ids = seed_world(media_root)
    username = {"creative": "casey", "ops": "olive", "admin": "ada"}[role]
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(f"{live_server_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"{username}-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)

    too_wide, visited = [], []
    for path in pages_for(role, ids):
        response = page.goto(f"{live_server_url}{path}")
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        visited.append(path)
        scroll, client = overflow(page)
        if scroll > client:
            culprits = page.evaluate(
                """(limit) => [...document.querySelectorAll('body *')]
                     .filter(e => e.getBoundingClientRect().right > limit + 1)
                     .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''))""",
                client,
            )
            too_wide.append(f"{path}: {scroll}px > {client}px ({', '.join(culprits)})")
    context.close()
    assert len(visited) >= 8
    assert too_wide == []


def test_review_actions_are_big_enough_to_tap_on_a_phone(demo_lanes, media_root, live_server_url, browser):
    seed_world(media_root)
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(f"{live_server_url}/login/?next=/review/")
    page.fill("input[name=username]", "casey")
    page.fill("input[name=password]", "casey-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/review/" in url)
    heights = page.eval_on_selector_all(
        ".review-item .actions button, .review-item .actions select",
        "els => els.map(e => [e.textContent.trim() || e.name, Math.round(e.getBoundingClientRect().height)])",
    )
    header = page.eval_on_selector("header.top", "e => e.getBoundingClientRect().right")
    logout = page.eval_on_selector("header.top .who button", "e => e.getBoundingClientRect().right")
    context.close()
    assert len(heights) == 5  # approve, reject, auto-fix, the re-render lane and its button
    assert [name for name, height in heights if height < 44] == []
    assert logout <= header <= PHONE["width"]
