"""Autoscaling signals from real job rows at known times: `manage.py scale_hint` and /metrics agree."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from lanes.models import Job, Lane
from lanes.scaling import desired_workers, lane_signals

pytestmark = pytest.mark.django_db


@pytest.fixture
def busy_lane(creative, demo_lanes, settings):
    """fast-draft over a 100 s window: 31 arrivals (one rejected brief aside), 21 finished, 7 waiting, 3 running."""
    settings.SCALE_WINDOW_SECONDS = 100
    settings.SCALE_HEADROOM = 1.25
    settings.SCALE_MAX_WORKERS = 16
    Lane.objects.filter(name="fast-draft").update(max_concurrency=2, latency_slo_ms=2000, hard_cap=64)
    lane = Lane.objects.get(name="fast-draft")
    now = timezone.now()

    def job(ago: float, state: str, priority: str = "standard", **fields) -> None:
        Job.objects.create(
            owner=creative, prompt="p", intent="draft", lane=lane, model_version=lane.active_version, seed=1,
            width=64, height=64, steps=4, guidance=7.5, priority=priority, state=state,
            submitted_at=now - timedelta(seconds=ago), **fields,
        )  # fmt: skip

    for i in range(20):  # succeeded in the window, 2 s each
        job(90 - i, "succeeded", run_seconds=2.0, finished_at=now - timedelta(seconds=80 - i))
    job(50, "failed", finished_at=now - timedelta(seconds=45))
    for i in range(4):
        job(10 + i, "queued")
    job(9, "queued", "critical")
    job(8, "deferred", "background", admission="deferred", deferred_at=now)
    job(7, "deferred", "background", admission="deferred", deferred_at=now)
    for i in range(3):
        job(5 + i, "running", started_at=now)
    job(3, "rejected", admission="rejected")
    # Before the window: neither arrivals nor service, and their 10 s runs leave the mean alone.
    for i in range(10):
        job(300 + i, "succeeded", run_seconds=10.0, finished_at=now - timedelta(seconds=150))
    return lane


def test_the_formula_is_littles_law_with_headroom_floored_by_running_jobs_and_capped(settings):
    settings.SCALE_HEADROOM, settings.SCALE_MAX_WORKERS = 1.25, 16
    common = dict(mean_run_seconds=2.0, max_concurrency=2, slo_seconds=2.0, hard_cap=64)
    # 1.25 × (0.31 × 2 + 7 × 2 / 2) / 2 = 4.76 → 5
    assert desired_workers(arrival_rate=0.31, waiting=7, running=3, **common) == 5
    assert desired_workers(arrival_rate=0.0, waiting=0, running=0, **common) == 0
    # Nothing arriving or waiting, but 5 jobs running on 2 slots a worker: 3 workers stay.
    assert desired_workers(arrival_rate=0.0, waiting=0, running=5, **common) == 3
    # 1.25 × 1.6 × 2 / 2 = 2 exactly (4.000000000000001 in floating point): no rounding up to 3.
    assert desired_workers(arrival_rate=1.6, waiting=0, running=0, **common) == 2
    # hard_cap 6 on 2 slots: no more than 3 workers can ever be busy.
    assert desired_workers(arrival_rate=0.0, waiting=500, running=0, **{**common, "hard_cap": 6}) == 3


def test_scale_hint_prints_the_signals_of_real_jobs_as_json(busy_lane, settings):
    out = io.StringIO()
    call_command("scale_hint", "--lane", "fast-draft", stdout=out)
    report = json.loads(out.getvalue())
    assert (report["window_seconds"], report["headroom"], report["max_workers"]) == (100, 1.25, 16)
    [signal] = report["lanes"]
    assert signal["lane"] == "fast-draft"
    assert signal["queue_depth"] == {"critical": 1, "standard": 4, "background": 2}
    assert signal["running"] == 3
    assert signal["arrival_rate"] == pytest.approx(31 / 100)
    assert signal["service_rate"] == pytest.approx(21 / 100)
    assert signal["mean_run_seconds"] == pytest.approx(2.0)
    assert (signal["max_concurrency"], signal["slo_seconds"]) == (2, 2.0)
    assert signal["desired_workers"] == 5  # 1.25 × (0.31 × 2 + 7 × 2 / 2) / 2 = 4.76

    settings.SCALE_MAX_WORKERS = 4
    assert {s.lane: s.desired_workers for s in lane_signals()}["fast-draft"] == 4


def test_scale_hint_lists_every_lane_and_idle_lanes_want_no_workers(busy_lane):
    out = io.StringIO()
    call_command("scale_hint", stdout=out)
    lanes = {s["lane"]: s for s in json.loads(out.getvalue())["lanes"]}
    assert set(lanes) == set(Lane.objects.values_list("name", flat=True))
    assert lanes["final-render"]["desired_workers"] == 0
    assert lanes["final-render"]["arrival_rate"] == 0 and lanes["final-render"]["service_rate"] == 0


def test_scale_hint_refuses_an_unknown_lane(busy_lane):
    with pytest.raises(CommandError, match="Unknown lanes: nope"):
        call_command("scale_hint", "--lane", "nope", stdout=io.StringIO())


def test_metrics_export_the_same_signals(admin_client, busy_lane):
    response = admin_client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    desired = {s.labels["lane"]: s.value for s in families["laneway_lane_desired_workers"].samples}
    assert desired["fast-draft"] == 5 and desired["final-render"] == 0
    depth = {
        (s.labels["lane"], s.labels["class"]): s.value
        for s in families["laneway_lane_queue_depth"].samples
        if s.labels["lane"] == "fast-draft"
    }
    assert depth == {("fast-draft", "critical"): 1, ("fast-draft", "standard"): 4, ("fast-draft", "background"): 2}
    arrival = {s.labels["lane"]: s.value for s in families["laneway_lane_arrival_rate"].samples}
    service = {s.labels["lane"]: s.value for s in families["laneway_lane_service_rate"].samples}
    assert arrival["fast-draft"] == pytest.approx(0.31) and service["fast-draft"] == pytest.approx(0.21)
