"""The shadow pages: start and stop on the lane page (ops and admins), the side-by-side page and its images
(admins only), and shadow jobs kept out of every creative-facing page."""

from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from lanes import shadow
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import AuditEvent, Job, Lane, ModelVersion, Shadow, hash_checkpoint
from tests.conftest import make_user
from tests.experiments.shadowed import OK, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def v2(demo_lanes):
    return ModelVersion.objects.create(
        name="views-shadow", location=DEMO_CHECKPOINT,
        content_hash=hash_checkpoint(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT), status="validated",
    )  # fmt: skip


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


@pytest.fixture
def maker(db):
    return make_user("casey")


def lane() -> Lane:
    return Lane.objects.select_related("active_version").get(name="fast-draft")


def start_url():
    return reverse("lane-shadow-start", args=["fast-draft"])


def test_ops_start_a_shadow_from_the_lane_page_and_stop_it(client, v2):
    client.force_login(make_user("olive", "ops"))
    page = client.get(reverse("lane-detail", args=["fast-draft"]))
    assert page.status_code == 200 and 'id="shadow-form"' in page.text and "No shadow running." in page.text
    response = client.post(start_url(), {"version": "views-shadow", "percent": 30, "revision": lane().revision})
    assert response.status_code == 302
    run = Shadow.objects.get()
    assert (run.version, run.percent, run.started_by.username, run.is_running) == (v2, 30, "olive", True)
    page = client.get(reverse("lane-detail", args=["fast-draft"]))
    assert "views-shadow shadows 30% of the briefs since" in page.text and 'id="shadow-form"' not in page.text
    assert "Compare side by side" not in page.text  # the side-by-side page is for admins
    response = client.post(reverse("lane-shadow-stop", args=["fast-draft"]), {"revision": lane().revision})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.stopped_at is not None and run.stopped_reason == "stopped in the console"
    assert [e.action for e in AuditEvent.objects.filter(lane=lane()).order_by("at", "pk")][-2:] == [
        "shadow.start",
        "shadow.stop",
    ]


@pytest.mark.parametrize(
    ("post", "status", "said"),
    [
        ({"version": "views-shadow", "percent": 0}, 400, "Ensure this value is greater than or equal to 1."),
        ({"version": "views-shadow", "percent": 101}, 400, "Ensure this value is less than or equal to 100."),
        ({"version": "views-shadow", "percent": "lots"}, 400, "Enter a whole number."),
        ({"version": "no-such-version", "percent": 10}, 400, "Select a valid choice."),
        ({"version": "demo-tiny-sd-v1", "percent": 10}, 400, "already serves lane fast-draft"),
        ({"version": "views-shadow", "percent": 10, "revision": 1}, 409, "was changed by"),
    ],
)
def test_bad_shadow_requests_say_why_and_change_nothing(client, v2, admin, post, status, said):
    AuditEvent.record(admin, "lane.note", lane=lane())  # a change the stale page did not see
    Lane.objects.filter(name="fast-draft").update(revision=2)
    client.force_login(admin)
    revision = lane().revision
    response = client.post(start_url(), {"revision": revision, **post})
    assert response.status_code == status
    assert said in response.text
    assert not Shadow.objects.exists() and lane().revision == revision


def test_a_second_shadow_on_the_lane_is_refused(client, v2, admin):
    shadow.start(lane(), v2, 10, admin)
    other = ModelVersion.objects.create(
        name="views-other", location=v2.location, content_hash=v2.content_hash, status="validated"
    )
    client.force_login(admin)
    response = client.post(start_url(), {"version": other.name, "percent": 10, "revision": lane().revision})
    assert response.status_code == 400 and "already shadowed by views-shadow" in response.text
    assert list(Shadow.objects.values_list("version__name", flat=True)) == ["views-shadow"]


def test_creatives_cannot_start_or_stop_shadows(client, v2):
    client.force_login(make_user("casey", "creative"))
    assert client.post(start_url(), {"version": "views-shadow", "percent": 10, "revision": 1}).status_code == 403
    assert client.post(reverse("lane-shadow-stop", args=["fast-draft"]), {"revision": 1}).status_code == 403
    assert not Shadow.objects.exists()


def test_the_side_by_side_page_is_for_admins_only(client, v2, admin, maker):
    shadow.start(lane(), v2, 100, admin)
    (copy,) = make_pairs(maker, [OK])
    url = reverse("lane-shadow", args=["fast-draft"])
    image = reverse("shadow-image", args=["fast-draft", copy.pk, "final"])
    assert client.get(url).status_code == 302  # to the login page
    for role, status in (("creative", 403), ("ops", 403), ("admin", 200)):
        client.force_login(make_user(f"user-{role}", role))
        assert client.get(url).status_code == status
        assert client.get(image).status_code == status


def test_the_side_by_side_page_shows_each_pair_with_its_figures_and_the_gate(client, v2, admin, maker):
    fast = lane()
    fast.canary_min_samples = 6
    fast.save()
    run = shadow.start(fast, v2, 100, admin)
    copies = make_pairs(maker, [("succeeded", 2.0, 2.0, "flagged", 0.5)] * 6)
    client.force_login(admin)
    page = client.get(reverse("lane-shadow", args=["fast-draft"]))
    assert page.status_code == 200
    text = page.text
    assert 'hx-trigger="every 3s"' in text  # running: the pairs refresh themselves
    assert "6 finished pairs of 6" in text
    for copy in copies:
        production = Job.objects.get(pk=copy.shadow_of_id)
        assert reverse("job-image", args=[production.pk, "final"]) in text
        assert reverse("shadow-image", args=["fast-draft", copy.pk, "final"]) in text
        assert f'data-pair="{copy.pk}"' in text
    assert "1.000 → 2.000 <small>×2.00</small>" in text  # run seconds per pair, production → shadow
    assert "0.000 → 0.500" in text  # edit distance per pair
    assert "Gate does not pass:" in text and "p95 run time 2000 ms vs 1000 ms (×2.00, limit ×1.50)" in text
    assert "run time: shadow is 100% slower than production" in text  # the paired statistics' sentence
    image = client.get(reverse("shadow-image", args=["fast-draft", copies[0].pk, "final"]))
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert b"".join(image) == Path(settings.MEDIA_ROOT, copies[0].final_artifact().path).read_bytes()

    swap = client.get(reverse("lane-shadow", args=["fast-draft"]), HTTP_HX_REQUEST="true")
    assert swap.status_code == 200 and swap.text.lstrip().startswith('<section id="shadow-pairs"')
    shadow.stop(fast, admin)
    stopped = client.get(reverse("lane-shadow", args=["fast-draft"]) + f"?run={run.pk}")
    assert "every 3s" not in stopped.text and "stopped" in stopped.text
    assert client.get(reverse("lane-shadow", args=["fast-draft"]) + "?run=999999").status_code == 404


def test_the_side_by_side_page_reads_a_fixed_number_of_queries(client, v2, admin, maker, django_assert_max_num_queries):
    shadow.start(lane(), v2, 100, admin)
    client.force_login(admin)
    url = reverse("lane-shadow", args=["fast-draft"])
    make_pairs(maker, [OK] * 3)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    make_pairs(maker, [OK] * 9, first_seed=200)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get(url).status_code == 200


def test_shadow_jobs_are_on_no_page_a_creative_or_anyone_else_opens_for_jobs(client, v2, admin, maker):
    shadow.start(lane(), v2, 100, admin)
    flagged = ("succeeded", 1.0, 1.0, "flagged", 0.4)
    copies = make_pairs(maker, [flagged, flagged], production=flagged)
    production = [Job.objects.get(pk=c.shadow_of_id) for c in copies]
    for user in (maker, admin):
        client.force_login(user)
        listing = client.get(reverse("job-list"))
        assert all(reverse("job-detail", args=[j.pk]) in listing.text for j in production)
        assert not any(reverse("job-detail", args=[c.pk]) in listing.text for c in copies)
        for copy in copies:
            assert client.get(reverse("job-detail", args=[copy.pk])).status_code == 404
            assert client.get(reverse("job-image", args=[copy.pk, "final"])).status_code == 404
        review = client.get(reverse("review"))
        assert review.status_code == 200
        assert all(f"Job {j.pk}</a>" in review.text for j in production)  # flagged production images wait for review
        assert not any(f"Job {c.pk}</a>" in review.text for c in copies)  # flagged shadow images never do
    client.force_login(maker)
    assert client.get(reverse("lane-shadow", args=["fast-draft"])).status_code == 403
