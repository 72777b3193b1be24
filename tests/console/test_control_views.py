import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from lanes import registry, rollout
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import AuditEvent, Lane, ModelVersion, Worker, hash_checkpoint
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def v2(demo_lanes):
    target = Path(settings.MODELS_ROOT) / "views-v2"
    if not target.exists():
        shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    return ModelVersion.objects.create(
        name="views-v2", location="views-v2", content_hash=hash_checkpoint(target), status="validated"
    )


def test_two_admins_changing_one_lane_the_second_is_refused_not_overwriting(client, v2):
    first, second = make_user("ada", "admin"), make_user("bea", "admin")
    lane = Lane.objects.get(name="fast-draft")
    seen = lane.revision  # both loaded the page at this revision
    client.force_login(first)
    response = client.post(reverse("lane-activate", args=["fast-draft"]), {"version": "views-v2", "revision": seen})
    assert response.status_code == 302
    client.force_login(second)
    response = client.post(
        reverse("lane-canary", args=["fast-draft"]), {"version": "views-v2", "percent": 10, "revision": seen}
    )
    assert response.status_code == 409
    assert "was changed by ada (lane.activate" in response.text and "Nothing was applied" in response.text
    lane.refresh_from_db()
    assert lane.active_version == v2 and lane.canary_version is None and lane.revision == seen + 1
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["lane.activate"]


def test_the_lane_page_shows_versions_history_and_the_rollback_target(client, v2):
    admin = make_user("ada", "admin")
    rollout.activate(Lane.objects.get(name="fast-draft"), v2, admin)
    client.force_login(admin)
    page = client.get(reverse("lane-detail", args=["fast-draft"]))
    assert page.status_code == 200
    assert "Roll back to demo-tiny-sd-v1" in page.text and 'id="history"' in page.text
    assert page.text.count("views-v2") >= 2  # active version, history row
    ops = make_user("olive", "ops")
    client.force_login(ops)
    Worker.objects.create(ident="h:1", node="gpu0@h", hostname="h", pid=1, queues="control,lane.preview")
    Worker.objects.create(ident="h:2", node="verify@h", hostname="h", pid=2, queues="verify")
    page = client.get(reverse("lane-detail", args=["fast-draft"]))
    assert "Roll back" not in page.text and "Save limits" in page.text  # ops operate, admins deploy
    assert "gpu0@h" in page.text and "Start consuming" in page.text  # a render worker, not on this lane yet
    assert "verify@h" not in page.text  # the OCR worker renders nothing


def test_bad_lane_input_gets_a_message_and_a_4xx_and_changes_nothing(client, demo_lanes):
    client.force_login(make_user("olive", "ops"))
    lane = Lane.objects.get(name="fallback")
    url = reverse("lane-mode", args=["fallback"])
    assert client.post(url, {"mode": "sideways", "revision": lane.revision}).status_code == 400
    response = client.post(url, {"mode": "disabled", "revision": lane.revision})
    assert response.status_code == 400 and "with no enabled lane" in response.text
    fields = {"revision": lane.revision, "max_concurrency": 2, "defer_depth": 30, "hard_cap": 5,
              "latency_slo_ms": 1500, "canary_window_minutes": 30, "canary_min_samples": 20,
              "canary_max_error_rate_increase": 0.05, "canary_max_p95_ratio": 1.5,
              "canary_max_flag_rate_increase": 0.1}  # fmt: skip
    response = client.post(reverse("lane-limits", args=["fallback"]), fields)
    assert response.status_code == 400 and "must be at least the defer depth" in response.text
    assert "__all__" not in response.text  # an error about the whole form reads as a sentence
    assert 'data-page-url="/lanes/fallback/"' in response.text  # the address bar goes back to the lane
    assert "Latency SLO (ms)" in response.text
    response = client.post(reverse("lane-limits", args=["fallback"]), {**fields, "max_concurrency": "many"})
    assert response.status_code == 400 and "Enter a whole number" in response.text
    assert Lane.objects.get(name="fallback").revision == lane.revision and not AuditEvent.objects.exists()
    assert client.post(reverse("lane-mode", args=["no-such-lane"]), {"mode": "enabled"}).status_code == 404


def test_registering_a_version_in_the_browser_reports_field_errors(client, demo_lanes):
    client.force_login(make_user("ada", "admin"))
    response = client.post(
        reverse("version-new"),
        {"name": "x1", "family": "sd15", "location": "../../etc", "dtype": "float32"},
    )
    assert response.status_code == 400 and "outside MODELS_ROOT" in response.text
    assert not ModelVersion.objects.filter(name="x1").exists()
    response = client.post(
        reverse("version-new"),
        {"name": "x1", "family": "sd15", "location": DEMO_CHECKPOINT, "dtype": "float32"},
    )
    assert response.status_code == 302
    version = ModelVersion.objects.get(name="x1")
    assert version.status == "staged" and version.content_hash == ""  # a worker hashes it
    page = client.get(reverse("version-detail", args=["x1"]))
    assert "Staged" in page.text and "x1 registered; a worker hashes its files, then validates it." in page.text
    assert "not hashed yet" in page.text and "The same files" not in page.text
    assert registry.run_validation(version, "test") is True
    page = client.get(reverse("version-detail", args=["x1"]))
    assert ModelVersion.objects.get(name="x1").content_hash in page.text
    assert "The same files are registered already as demo-tiny-sd-v1." in page.text


GiB = 1024**3


def test_the_version_pages_show_hashing_progress_and_refresh_while_it_runs(client, demo_lanes):
    client.force_login(make_user("ada", "admin"))
    version = ModelVersion.objects.create(name="big-one", location=DEMO_CHECKPOINT)
    ModelVersion.objects.filter(pk=version.pk).update(
        status="validating", hash_bytes_done=int(1.2 * GiB), hash_bytes_total=int(2.8 * GiB)
    )
    progress = "hashing — 42% (1.2\xa0GB of 2.8\xa0GB)"  # filesizeformat keeps a number with its unit
    page = client.get(reverse("version-detail", args=["big-one"]))
    assert page.status_code == 200 and progress in page.text and 'value="42"' in page.text
    swap = client.get(reverse("version-detail", args=["big-one"]), headers={"HX-Request": "true"})
    assert swap.text.lstrip().startswith('<section id="version-status"') and "every 2s" in swap.text
    assert progress in swap.text and "<h2>" not in swap.text  # the status section alone
    listing = client.get(reverse("version-list"))
    assert progress in listing.text and "?part=table" in listing.text
    table = client.get(reverse("version-list") + "?part=table", headers={"HX-Request": "true"})
    assert table.text.lstrip().startswith('<table class="table" id="versions"') and progress in table.text
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("version-list") + "?part=table", headers={"HX-Request": "true"})
    for n in range(3):
        ModelVersion.objects.create(name=f"more-{n}", location=DEMO_CHECKPOINT, status="validating")
    with CaptureQueriesContext(connection) as four:
        client.get(reverse("version-list") + "?part=table", headers={"HX-Request": "true"})
    assert len(four) == len(one)  # the list's queries do not grow with its rows
    ModelVersion.objects.filter(name__startswith="more-").delete()

    # Hashed: the smoke render comes next; then, with a verdict, nothing refreshes any more.
    ModelVersion.objects.filter(pk=version.pk).update(hash_bytes_done=int(2.8 * GiB), content_hash="ab" * 32)
    page = client.get(reverse("version-detail", args=["big-one"]))
    assert "hashing" not in page.text and "smoke render running" in page.text and "ab" * 32 in page.text
    ModelVersion.objects.filter(pk=version.pk).update(status="validated")
    page = client.get(reverse("version-detail", args=["big-one"]))
    assert "every 2s" not in page.text
    assert "?part=table" not in client.get(reverse("version-list")).text


def test_the_audit_log_filters_by_lane_user_and_action(client, v2):
    admin, ops = make_user("ada", "admin"), make_user("olive", "ops")
    rollout.activate(Lane.objects.get(name="fast-draft"), v2, admin)
    from lanes import control

    control.set_mode(Lane.objects.get(name="preview"), "draining", ops)
    client.force_login(ops)
    rows = lambda query: client.get(reverse("audit") + query).text.count('class="audit-row"')  # noqa: E731
    assert rows("") == 2
    assert rows("?lane=preview") == 1 and rows("?user=ada") == 1 and rows("?action=lane.activate") == 1
    assert rows("?lane=preview&user=ada") == 0


def test_dismissing_a_notice_returns_to_the_page_but_never_off_site(client, demo_lanes):
    client.force_login(make_user("olive", "ops"))
    Lane.objects.filter(name="preview").update(notice="Canary x rolled back automatically: reasons")
    assert "rolled back automatically" in client.get(reverse("job-list")).text
    url = reverse("lane-dismiss-notice", args=["preview"])
    response = client.post(url, {"next": "https://evil.example/phish"})
    assert response["Location"] == reverse("lane-detail", args=["preview"])
    assert Lane.objects.get(name="preview").notice == ""
    assert AuditEvent.objects.get(action="lane.dismiss-notice").before["notice"].startswith("Canary x")
    Lane.objects.filter(name="preview").update(notice="again")
    assert client.post(url, {"next": "/jobs/"})["Location"] == "/jobs/"


def test_a_version_registered_in_the_browser_gets_its_family_from_its_files(client, demo_lanes):
    client.force_login(make_user("ada", "admin"))
    form = {"name": "my-sdxl", "family": "", "location": "demo-tiny-sdxl", "dtype": "float16"}
    assert client.post(reverse("version-new"), form).status_code == 302
    version = ModelVersion.objects.get(name="my-sdxl")
    assert (version.family, version.dtype) == ("sdxl", "float16")
    page = client.get(reverse("version-list"))
    assert 'id="families"' in page.text and "Stable Diffusion XL" in page.text
    # A hosted engine needs its API fields; an unset key variable is named, and nothing is stored.
    hosted = {
        "name": "api",
        "family": "http",
        "dtype": "float32",
        "base_url": "not a url",
        "api_key_env": "NO_SUCH_KEY",
    }
    response = client.post(reverse("version-new"), hosted)
    assert response.status_code == 400
    assert "base URL" in response.text and "Name the model" in response.text
    assert "The environment variable NO_SUCH_KEY is not set" in response.text
    assert not ModelVersion.objects.filter(name="api").exists()
    # A checkpoint needs a location.
    response = client.post(reverse("version-new"), {"name": "empty", "family": "", "dtype": "float32"})
    assert response.status_code == 400 and "folder or file under MODELS_ROOT" in response.text


def test_an_admin_registers_a_lora_and_ops_serve_it_on_a_lane(client, demo_lanes):
    from lanes import registry
    from lanes.checkpoints import build_demo_lora
    from lanes.models import Adapter, LaneAdapter

    target = Path(settings.MODELS_ROOT) / "loras" / "sd15"
    if not (target / "pytorch_lora_weights.safetensors").exists():
        build_demo_lora(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    client.force_login(make_user("ada", "admin"))
    url = reverse("version-adapter-new", args=["demo-tiny-sd-v1"])
    bad = client.post(url, {"name": "house", "location": "loras/none.safetensors", "default_weight": 1})
    assert bad.status_code == 400 and "does not exist under MODELS_ROOT" in bad.text
    location = "loras/sd15/pytorch_lora_weights.safetensors"
    assert client.post(url, {"name": "house", "location": location, "default_weight": 0.7}).status_code == 302
    adapter = Adapter.objects.get(name="house")
    assert registry.validate_adapter(adapter.pk) == "validated"  # what the worker's task runs

    client.force_login(make_user("olive", "ops"))
    lane = Lane.objects.get(name="fast-draft")
    page = client.get(reverse("lane-detail", args=["fast-draft"]))
    assert 'id="lane-adapter-form"' in page.text
    form = {"revision": lane.revision, "adapter": adapter.pk, "weight": "", "pinned": "on"}
    assert client.post(reverse("lane-adapter-link", args=["fast-draft"]), form).status_code == 302
    link = LaneAdapter.objects.get(lane=lane)
    assert (link.weight, link.pinned) == (0.7, True)
    assert AuditEvent.objects.filter(action="lane.adapter", lane=lane).exists()
    # A stale page is refused; the current one removes it.
    stale = client.post(reverse("lane-adapter-unlink", args=["fast-draft", adapter.pk]), {"revision": lane.revision})
    assert stale.status_code == 409 and LaneAdapter.objects.filter(lane=lane).exists()
    lane.refresh_from_db()
    fresh = {"revision": lane.revision}
    assert client.post(reverse("lane-adapter-unlink", args=["fast-draft", adapter.pk]), fresh).status_code == 302
    assert not LaneAdapter.objects.filter(lane=lane).exists()


def test_an_admin_marks_a_turbo_checkpoint_as_distilled(client, demo_lanes):
    client.force_login(make_user("ada", "admin"))
    form = {"name": "my-turbo", "location": "demo-tiny-sdxl", "dtype": "float16", "distilled": "yes"}
    assert client.post(reverse("version-new"), form).status_code == 302
    assert ModelVersion.objects.get(name="my-turbo").distilled is True
    form = {"name": "my-base", "location": "demo-tiny-sdxl", "dtype": "float16", "distilled": ""}
    assert client.post(reverse("version-new"), form).status_code == 302
    assert ModelVersion.objects.get(name="my-base").distilled is False  # detected: not a Flux schnell


def test_a_lane_no_live_worker_consumes_is_flagged_on_the_lane_pages(client, demo_lanes):
    client.force_login(make_user("olive", "ops"))
    Worker.objects.create(ident="h:1", node="gpu0@h", hostname="h", pid=1, queues="celery,lane.preview")
    Lane.objects.filter(name="fallback").update(enabled=False)  # disabled: nothing is sent there, no flag

    def flagged(html: str) -> set[str]:
        rows = html.split('<tr id="lane-')[1:]
        return {row.split('"', 1)[0] for row in rows if "data-no-consumer" in row}

    enabled = set(Lane.objects.filter(enabled=True).values_list("name", flat=True))
    assert flagged(client.get(reverse("lane-list")).text) == enabled - {"preview"}
    assert flagged(client.get(reverse("policy")).text) == enabled - {"preview"}
    assert "no worker consumes this lane" in client.get(reverse("lane-detail", args=["fast-draft"])).text
    assert "data-no-consumer" not in client.get(reverse("lane-detail", args=["preview"])).text
    Worker.objects.create(ident="h:2", node="gpu1@h", hostname="h", pid=2, queues="lane.fast-draft")
    assert "data-no-consumer" not in client.get(reverse("lane-detail", args=["fast-draft"])).text


def test_ops_opt_a_lane_out_of_preemption_with_the_limits_form(client, demo_lanes):
    client.force_login(make_user("olive", "ops"))
    lane = Lane.objects.get(name="fallback")
    page = client.get(reverse("lane-detail", args=["fallback"]))
    assert 'name="preemptible"' in page.text and "Preemptible" in page.text
    fields = {"revision": lane.revision, "max_concurrency": lane.max_concurrency, "defer_depth": lane.defer_depth,
              "hard_cap": lane.hard_cap, "latency_slo_ms": lane.latency_slo_ms,
              "canary_window_minutes": lane.canary_window_minutes, "canary_min_samples": lane.canary_min_samples,
              "canary_max_error_rate_increase": lane.canary_max_error_rate_increase,
              "canary_max_p95_ratio": lane.canary_max_p95_ratio,
              "canary_max_flag_rate_increase": lane.canary_max_flag_rate_increase}  # fmt: skip
    # An unticked checkbox sends nothing: the lane opts out.
    response = client.post(reverse("lane-limits", args=["fallback"]), fields)
    assert response.status_code in (200, 302), response.text
    assert Lane.objects.get(name="fallback").preemptible is False
    assert AuditEvent.objects.get(action="lane.limits").after == {"preemptible": False}
