"""Dashboard and lane-metrics response time with 100k jobs in PostgreSQL.

Fills a fresh PostgreSQL database with --jobs jobs spread over the last 24 hours on the
demo lanes (succeeded and failed, with timings, GPU-seconds and prices) and 5 minutes of
samples from 8 GPUs, then times, over HTTP against uvicorn, the dashboard (5 min window),
its lane table partial for the 1 h and 24 h windows, and /metrics. Ends with one line of JSON.

    .venv/bin/python bench/metrics_page.py [--jobs 100000] [--requests 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import timedelta

from harness import Stack, percentile, reset_postgres, run_child

PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/laneway_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def fill(n_jobs: int) -> None:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from lanes.models import Job, Lane
    from telemetry.models import GpuSample

    rng = random.Random(1)
    user = get_user_model().objects.get(username="bench")
    lanes = list(Lane.objects.select_related("active_version"))
    now = timezone.now()
    batch = []
    for i in range(n_jobs):
        lane = lanes[i % len(lanes)]
        submitted = now - timedelta(seconds=rng.uniform(0, 24 * 3600))
        started = submitted + timedelta(seconds=rng.expovariate(5))
        finished = started + timedelta(seconds=rng.lognormvariate(-1, 0.5))
        ok = rng.random() > 0.03
        batch.append(Job(owner=user, prompt="bench", intent="draft", lane=lane, model_version=lane.active_version,
                         seed=i, width=64, height=64, steps=4, guidance=7.5, state="succeeded" if ok else "failed",
                         submitted_at=submitted, started_at=started, finished_at=finished,
                         gpu_seconds=(finished - started).total_seconds() if ok else None,
                         gpu_name="NVIDIA H100 80GB HBM3", worker="gpu0@bench:1", gpu_index=i % 8))  # fmt: skip
        if len(batch) == 5000:
            Job.objects.bulk_create(batch)
            batch = []
    Job.objects.bulk_create(batch)
    samples = [
        GpuSample(worker=f"gpu{g}@bench:{g}", gpu_index=g, name="NVIDIA H100 80GB HBM3",
                  utilization_pct=rng.uniform(0, 100),
                  memory_used_bytes=rng.randrange(1 << 34), memory_total_bytes=80 << 30,
                  taken_at=now - timedelta(seconds=s))
        for g in range(8) for s in range(300)
    ]  # fmt: skip
    GpuSample.objects.bulk_create(samples, batch_size=5000)


def run(n_jobs: int, requests: int) -> dict:
    with Stack() as stack:
        from django.db import connection

        started = time.monotonic()
        fill(n_jobs)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        filled = time.monotonic() - started
        stack.start(worker=False)
        session = stack.session()
        pages = {
            "dashboard_5m": ("/dashboard/", {}),
            "lanes_1h": ("/dashboard/?window=1h&part=lanes", {"HX-Request": "true"}),
            "lanes_24h": ("/dashboard/?window=24h&part=lanes", {"HX-Request": "true"}),
            "metrics": ("/metrics", {}),
        }
        timings: dict[str, list[float]] = {}
        for name, (path, headers) in pages.items():
            session.conn.request("GET", path, headers={"Cookie": session.cookie_header, **headers})
            session.conn.getresponse().read()  # warm-up
            for _ in range(requests):
                t = time.perf_counter()
                session.conn.request("GET", path, headers={"Cookie": session.cookie_header, **headers})
                response = session.conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status}")
                timings.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        everything = [t for values in timings.values() for t in values]
        return {
            "jobs": n_jobs,
            "fill_s": round(filled, 1),
            "pages": {
                k: {"p50_ms": round(percentile(v, 50), 1), "p95_ms": round(percentile(v, 95), 1)}
                for k, v in timings.items()
            },  # fmt: skip
            "p95_ms": round(percentile(everything, 95), 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.jobs, args.requests)))
        return
    reset_postgres(PG_URL)
    argv = ["--child", "--jobs", str(args.jobs), "--requests", str(args.requests)]
    r = json.loads(run_child(__file__, argv, {"DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL}, "metrics"))
    for name, figures in r["pages"].items():
        print(f"{name:13s} p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms", file=sys.stderr)
    print(f"{r['jobs']} jobs in PostgreSQL (filled in {r['fill_s']} s)", file=sys.stderr)
    print(json.dumps({"bench": "metrics_page", "p95_ms": r["p95_ms"], "jobs": r["jobs"], "pages": r["pages"]}))


if __name__ == "__main__":
    main()
