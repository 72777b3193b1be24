from datetime import timedelta

import pytest
from django.utils import timezone

from lanes.models import Artifact, Job, Lane, Verification
from lanes.stats import lane_stats


@pytest.fixture
def constructed(creative, demo_lanes, settings):
    """100 succeeded jobs on fast-draft with queue times 1..100 ms and run times 1..100 s, plus failures."""
    settings.GPU_HOURLY_PRICES = {"NVIDIA H100 80GB HBM3": 3.6, "default": 1.8}
    lane = Lane.objects.get(name="fast-draft")
    now = timezone.now()
    rows = []
    for i in range(1, 101):
        submitted = now - timedelta(seconds=200)
        started = submitted + timedelta(milliseconds=i)
        rows.append(Job(owner=creative, prompt="p", intent="draft", lane=lane, model_version=lane.active_version,
                        seed=i, width=64, height=64, steps=4, guidance=7.5, state="succeeded",
                        submitted_at=submitted, started_at=started, finished_at=started + timedelta(seconds=i),
                        gpu_seconds=2.0, gpu_name="NVIDIA H100 80GB HBM3" if i <= 50 else "NVIDIA L4"))  # fmt: skip
    for i in range(25):
        rows.append(Job(owner=creative, prompt="p", intent="draft", lane=lane, model_version=lane.active_version,
                        seed=i, width=64, height=64, steps=4, guidance=7.5, state="failed", oom_count=1 if i < 5 else 0,
                        submitted_at=now - timedelta(seconds=100), finished_at=now - timedelta(seconds=50)))  # fmt: skip
    # Outside the 5 minute window: must not count.
    rows.append(Job(owner=creative, prompt="old", intent="draft", lane=lane, model_version=lane.active_version, seed=1,
                    width=64, height=64, steps=4, guidance=7.5, state="succeeded", submitted_at=now - timedelta(hours=2),
                    started_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=2)))  # fmt: skip
    Job.objects.bulk_create(rows)
    three = list(Job.objects.filter(prompt="p", state="failed").values_list("id", flat=True)[:3])
    Job.objects.filter(id__in=three).update(admission="deferred", deferred_at=now - timedelta(seconds=30))
    job = Job.objects.filter(state="succeeded").first()
    artifact = Artifact.objects.create(job=job, path="x.png", width=1, height=1, sha256="x", size_bytes=1)
    for status in ["passed"] * 3 + ["flagged"]:
        Verification.objects.create(job=job, artifact=artifact, lane=lane, model_version=lane.active_version,
                                    status=status, finished_at=now)  # fmt: skip
    return lane


def test_lane_stats_have_the_known_percentiles_rates_and_cost(constructed, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        (stats,) = lane_stats("5m")
    assert stats.lane == constructed and stats.version == constructed.active_version
    assert (stats.finished, stats.succeeded, stats.failed, stats.ooms, stats.deferrals) == (125, 100, 25, 5, 3)
    assert stats.run_s == pytest.approx({50: 50.0, 95: 95.0, 99: 99.0})
    assert stats.queue_s == pytest.approx({50: 0.050, 95: 0.095, 99: 0.099})
    assert stats.error_rate == pytest.approx(0.2)
    assert stats.throughput_per_min == pytest.approx(20.0)
    assert stats.gpu_seconds_per_image == pytest.approx(2.0)
    # 50 images at 3.60/h and 50 at the 1.80/h default, 2 GPU-seconds each.
    assert stats.cost_per_image == pytest.approx((50 * 2 * 3.6 + 50 * 2 * 1.8) / 3600 / 100)
    assert stats.pass_rate == pytest.approx(0.75)
    assert stats.over_slo


def test_wider_windows_take_older_jobs_in(constructed):
    (stats,) = lane_stats("24h")
    assert stats.succeeded == 101


def test_a_hosted_engines_price_per_image_counts_in_the_cost(constructed):
    # Ten of the succeeded jobs went to an image API instead: no GPU time, 4 cents each.
    ten = list(Job.objects.filter(prompt="p", state="succeeded").values_list("id", flat=True)[:10])
    Job.objects.filter(id__in=ten).update(gpu_seconds=0.0, api_cost=0.04, gpu_name="")
    (stats,) = lane_stats("5m")
    h100 = Job.objects.filter(prompt="p", gpu_name="NVIDIA H100 80GB HBM3").count()
    gpu = (h100 * 2 * 3.6 + (90 - h100) * 2 * 1.8) / 3600
    assert stats.cost_per_image == pytest.approx((gpu + 10 * 0.04) / 100)


def test_a_cold_starts_model_load_stays_out_of_the_run_time_percentiles(creative, demo_lanes):
    # After a restart: the first job spent 8.09 s of its 9.47 s loading the model, 9 warm ones ran 1.2 s.
    lane = Lane.objects.get(name="fast-draft")
    started = timezone.now() - timedelta(seconds=60)
    rows = [
        Job(owner=creative, prompt="p", intent="draft", lane=lane, model_version=lane.active_version, seed=i,
            width=64, height=64, steps=4, guidance=7.5, state="succeeded", submitted_at=started,
            started_at=started, finished_at=started + timedelta(seconds=9.47 if i == 0 else 1.2),
            load_seconds=8.09 if i == 0 else None)
        for i in range(10)
    ]  # fmt: skip
    Job.objects.bulk_create(rows)
    (stats,) = lane_stats("5m")
    assert stats.run_s[95] == pytest.approx(1.38)  # the cold job's run without its load, not 9.47
    assert stats.run_s[99] == pytest.approx(1.38) and stats.run_s[50] == pytest.approx(1.2)
    Lane.objects.filter(pk=lane.pk).update(latency_slo_ms=1500)
    (stats,) = lane_stats("5m")
    assert not stats.over_slo
    # The load itself counted as run time would have put the lane over its SLO.
    Job.objects.filter(load_seconds__isnull=False).update(load_seconds=None)
    (stats,) = lane_stats("5m")
    assert stats.run_s[95] == pytest.approx(9.47) and stats.over_slo


def test_device_seconds_on_a_cpu_are_counted_priced_and_labelled_cpu_seconds(constructed, settings):
    settings.GPU_HOURLY_PRICES = {"CPU": 0.36, "default": 1.8}
    Job.objects.filter(prompt="p", state="succeeded").update(device="cpu", gpu_name="CPU", gpu_seconds=0.5)
    (stats,) = lane_stats("5m")
    assert stats.gpu_seconds_per_image == pytest.approx(0.5) and stats.device_seconds_label == "CPU-s"
    assert stats.cost_per_image == pytest.approx(0.5 * 0.36 / 3600)
    Job.objects.filter(prompt="p", state="succeeded", seed__lte=10).update(device="cuda")
    (stats,) = lane_stats("5m")
    assert stats.device_seconds_label == "device-s"
