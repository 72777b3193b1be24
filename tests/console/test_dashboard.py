from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from lanes.actions import submit_brief
from lanes.models import Job, Lane, Worker
from telemetry.models import GpuSample
from tests.conftest import make_user


@pytest.fixture
def fleet(creative, demo_lanes):
    now = timezone.now()
    Worker.objects.create(ident="gpu0@a:1", hostname="a", pid=1, device="cuda", gpu_index=0, last_seen=now)
    Worker.objects.create(
        ident="gpu1@a:2", hostname="a", pid=2, device="cuda", gpu_index=1, last_seen=now - timedelta(minutes=5)
    )
    for i in range(3):
        GpuSample.objects.create(worker="gpu0@a:1", gpu_index=0, name="NVIDIA H100 80GB HBM3", utilization_pct=40 + i,
                                 memory_used_bytes=(i + 1) << 30, memory_total_bytes=80 << 30,
                                 taken_at=now - timedelta(seconds=3 - i))  # fmt: skip
    lane = Lane.objects.get(name="fast-draft")
    for i in range(4):
        Job.objects.create(owner=creative, prompt="p", intent="draft", lane=lane, model_version=lane.active_version,
                           seed=i, width=64, height=64, steps=4, guidance=7.5, state="succeeded", gpu_seconds=1.0,
                           submitted_at=now - timedelta(seconds=20), started_at=now - timedelta(seconds=19),
                           finished_at=now - timedelta(seconds=18))  # fmt: skip
    submit_brief(creative, prompt="waiting", intent="draft")
    return lane


def test_anonymous_is_sent_to_login(client, db):
    assert client.get(reverse("dashboard")).status_code == 302
    assert client.get(reverse("dashboard-samples")).status_code == 302


def test_the_dashboard_shows_gpu_cards_workers_and_lane_figures(ops_client, fleet):
    page = ops_client.get(reverse("dashboard"))
    assert page.status_code == 200
    assert 'data-series="gpu0@a:1|0"' in page.text and 'data-points="3"' in page.text
    assert "gpu1@a:2" in page.text and "lost" in page.text  # silent for 5 minutes
    assert "1.00 / <strong>1.00</strong> / 1.00 s" in page.text  # run p50 / p95 / p99 on fast-draft


def test_creatives_see_no_telemetry_or_cost(creative_client, fleet):
    assert creative_client.get(reverse("dashboard")).status_code == 403
    assert creative_client.get(reverse("dashboard-samples")).status_code == 403


def test_ops_see_cost_and_the_lane_table_refreshes_as_a_partial(client, django_user_model, fleet):
    client.force_login(make_user("olive", "ops"))
    assert "Cost / image" in client.get(reverse("dashboard")).text
    partial = client.get(reverse("dashboard") + "?window=1h&part=lanes", headers={"HX-Request": "true"})
    assert partial.text.lstrip().startswith('<div id="lane-table"') and "<html" not in partial.text


def test_the_history_endpoint_returns_five_minutes_of_series(ops_client, fleet):
    GpuSample.objects.create(
        worker="gpu0@a:1", gpu_index=0, utilization_pct=1, taken_at=timezone.now() - timedelta(minutes=10)
    )
    series = ops_client.get(reverse("dashboard-samples")).json()
    assert list(series) == ["gpu0@a:1|0"]
    assert series["gpu0@a:1|0"]["util"] == [40.0, 41.0, 42.0]
    assert series["gpu0@a:1|0"]["mem"] == [1.25, 2.5, 3.75]


def test_the_dashboard_query_count_does_not_grow_with_lanes_jobs_or_samples(ops_client, fleet, creative):
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert ops_client.get(reverse("dashboard")).status_code == 200
        return len(ctx)

    few = count()
    for i in range(5):
        submit_brief(creative, prompt=f"more {i}", intent="final")
        GpuSample.objects.create(worker="gpu0@a:1", gpu_index=0, utilization_pct=50, taken_at=timezone.now())
    assert count() == few


def test_a_cpu_workers_card_and_lane_figures_say_they_are_cpu(ops_client, fleet):
    now = timezone.now()
    GpuSample.objects.create(worker="cpu-9@b", gpu_index=None, name="CPU", utilization_pct=3.0,
                             memory_used_bytes=1 << 30, memory_total_bytes=8 << 30, taken_at=now)  # fmt: skip
    Job.objects.filter(lane=fleet, state="succeeded").update(device="cpu", gpu_name="CPU", gpu_seconds=0.25)
    page = ops_client.get(reverse("dashboard"))
    assert "worker process CPU" in page.text  # the CPU card: its own process, not the machine
    assert page.text.count("> utilisation ·") == 1  # the GPU card keeps its NVML utilisation
    assert "0.250 <small>CPU-s</small>" in page.text
