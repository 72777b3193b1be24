import pytest
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from lanes.models import Job, Lane
from telemetry.models import GpuSample


@pytest.fixture
def jobs(creative, demo_lanes):
    lane = Lane.objects.get(name="fast-draft")
    common = dict(owner=creative, prompt="p", intent="draft", lane=lane, model_version=lane.active_version, seed=1,
                  width=64, height=64, steps=4, guidance=7.5)  # fmt: skip
    for run in (0.04, 0.2, 0.3, 3.0):
        Job.objects.create(state="succeeded", run_seconds=run, **common)
    Job.objects.create(state="queued", **common)
    Job.objects.create(state="deferred", admission="deferred", deferred_at=timezone.now(), **common)
    Job.objects.create(state="failed", oom_count=2, **common)
    GpuSample.objects.create(
        worker="gpu-host:1", gpu_index=0, utilization_pct=88, memory_used_bytes=5, memory_total_bytes=9
    )


def scrape(client, **headers) -> dict:
    response = client.get(reverse("metrics"), headers=headers)
    assert response.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def test_metrics_need_a_token_or_an_ops_login(client, creative, ops_user, jobs, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert client.get(reverse("metrics")).status_code == 401
    assert client.get(reverse("metrics"), headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.force_login(creative)
    assert client.get(reverse("metrics")).status_code == 401
    assert scrape(client, Authorization="Bearer s3cret")
    client.force_login(ops_user)
    assert scrape(client)


def test_metrics_parse_back_to_the_jobs_and_samples(admin_client, jobs, django_assert_max_num_queries):
    with django_assert_max_num_queries(16):  # a constant number, whatever the jobs and lanes
        families = scrape(admin_client)
    depth = {(s.labels["lane"], s.labels["state"]): s.value for s in families["laneway_jobs"].samples}
    assert depth[("fast-draft", "succeeded")] == 4 and depth[("fast-draft", "queued")] == 1
    buckets = {
        s.labels["le"]: s.value for s in families["laneway_job_run_seconds"].samples if s.name.endswith("_bucket")
    }
    assert (buckets["0.05"], buckets["0.25"], buckets["0.5"], buckets["5.0"], buckets["+Inf"]) == (1, 2, 3, 4, 4)
    total = [s.value for s in families["laneway_job_run_seconds"].samples if s.name.endswith("_sum")][0]
    assert total == pytest.approx(3.54)
    assert [s.value for s in families["laneway_deferrals"].samples] == [1]
    assert [s.value for s in families["laneway_ooms"].samples] == [2]
    util = families["laneway_gpu_utilization_percent"].samples[0]
    assert (util.labels, util.value) == ({"worker": "gpu-host:1", "gpu": "0"}, 88.0)
