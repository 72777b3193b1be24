"""Prometheus exposition, computed from the database at scrape time (a handful of aggregate queries)."""

from __future__ import annotations

from django.db.models import Count, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from telemetry.models import GpuSample

from .models import Job, Lane, Worker
from .scaling import lane_signals

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LanewayCollector(Collector):
    def collect(self):
        lanes = {lane.pk: lane.name for lane in Lane.objects.only("name")}

        depth = GaugeMetricFamily("laneway_jobs", "Jobs per lane and state.", labels=["lane", "state"])
        for row in Job.objects.values("lane_id", "state").annotate(n=Count("id")).order_by():
            depth.add_metric([lanes.get(row["lane_id"], "?"), row["state"]], row["n"])
        yield depth

        bucket_counts = {f"le_{i}": Count("id", filter=Q(run_seconds__lte=b)) for i, b in enumerate(RUN_BUCKETS)}
        runs = (
            Job.objects.filter(state=Job.State.SUCCEEDED, run_seconds__isnull=False)
            .values("lane_id")
            .annotate(total=Count("id"), seconds=Sum("run_seconds"), **bucket_counts)
            .order_by()
        )
        histogram = HistogramMetricFamily(
            "laneway_job_run_seconds", "Pipeline run time of succeeded jobs.", labels=["lane"]
        )
        for row in runs:
            buckets = [(str(b), row[f"le_{i}"]) for i, b in enumerate(RUN_BUCKETS)] + [("+Inf", row["total"])]
            histogram.add_metric([lanes.get(row["lane_id"], "?")], buckets, row["seconds"] or 0.0)
        yield histogram

        per_lane = (
            Job.objects.values("lane_id")
            .annotate(
                deferrals=Count("id", filter=Q(deferred_at__isnull=False)),
                rejections=Count("id", filter=Q(admission=Job.Admission.REJECTED)),
                ooms=Sum("oom_count"),
                preemptions=Sum("preemptions"),
            )
            .order_by()
        )
        deferrals = GaugeMetricFamily("laneway_deferrals", "Jobs ever deferred by admission.", labels=["lane"])
        rejections = GaugeMetricFamily("laneway_rejections", "Briefs rejected at the hard cap.", labels=["lane"])
        ooms = GaugeMetricFamily("laneway_ooms", "CUDA out-of-memory errors caught.", labels=["lane"])
        preemptions = GaugeMetricFamily(
            "laneway_preemptions", "Times running jobs paused at a step boundary for a higher class.", labels=["lane"]
        )
        for row in per_lane:
            name = lanes.get(row["lane_id"], "?")
            deferrals.add_metric([name], row["deferrals"])
            rejections.add_metric([name], row["rejections"])
            ooms.add_metric([name], row["ooms"] or 0)
            preemptions.add_metric([name], row["preemptions"] or 0)
        yield from (deferrals, rejections, ooms, preemptions)

        yield GaugeMetricFamily("laneway_workers_alive", "Workers heartbeating.", value=Worker.objects.alive().count())

        labels = ["worker", "gpu"]
        util = GaugeMetricFamily("laneway_gpu_utilization_percent", "GPU (or CPU) utilisation.", labels=labels)
        used = GaugeMetricFamily("laneway_gpu_memory_used_bytes", "GPU memory (or worker RSS) used.", labels=labels)
        total = GaugeMetricFamily("laneway_gpu_memory_total_bytes", "GPU (or host) memory.", labels=labels)
        for sample in GpuSample.objects.latest_per_device():
            key = [sample.worker, "cpu" if sample.gpu_index is None else str(sample.gpu_index)]
            if sample.utilization_pct is not None:
                util.add_metric(key, sample.utilization_pct)
            if sample.memory_used_bytes is not None:
                used.add_metric(key, sample.memory_used_bytes)
            if sample.memory_total_bytes is not None:
                total.add_metric(key, sample.memory_total_bytes)
        yield from (util, used, total)

        yield from scaling_families()


def scaling_families() -> list[GaugeMetricFamily]:
    """The autoscaling signals of lanes/scaling.py, per lane (KEDA scales on laneway_lane_desired_workers)."""
    depth = GaugeMetricFamily(
        "laneway_lane_queue_depth",
        "Jobs waiting (queued or deferred) per lane and priority class.",
        labels=["lane", "class"],
    )
    arrivals = GaugeMetricFamily(
        "laneway_lane_arrival_rate", "Jobs submitted per second over SCALE_WINDOW_SECONDS.", labels=["lane"]
    )
    service = GaugeMetricFamily(
        "laneway_lane_service_rate", "Jobs finished per second over SCALE_WINDOW_SECONDS.", labels=["lane"]
    )
    run = GaugeMetricFamily(
        "laneway_lane_mean_run_seconds", "Mean run time of jobs that succeeded in the window.", labels=["lane"]
    )
    desired = GaugeMetricFamily(
        "laneway_lane_desired_workers",
        "Workers the lane needs: Little's law with headroom (see README).",
        labels=["lane"],
    )
    for signal in lane_signals():
        for priority, n in signal.queue_depth.items():
            depth.add_metric([signal.lane, priority], n)
        arrivals.add_metric([signal.lane], signal.arrival_rate)
        service.add_metric([signal.lane], signal.service_rate)
        run.add_metric([signal.lane], signal.mean_run_seconds)
        desired.add_metric([signal.lane], signal.desired_workers)
    return [depth, arrivals, service, run, desired]
