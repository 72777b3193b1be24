"""What Laneway adds on top of the pipeline call, end to end.

For each mode (embedded: SQLite + embedded Valkey; redis: PostgreSQL + Redis) it starts
the real processes (uvicorn serving the ASGI app, a Celery worker via manage.py
gpu_worker), logs in over HTTP, opens the job websocket, and then N times: POSTs a brief
to /briefs/new/ and waits for the job's "succeeded" event on the websocket. Right after
each job it times the bare pipeline call on the same inputs in this process. It prints
p50/p95 of (end-to-end - bare pipeline) per mode, and ends with one line of JSON.

The floor, measured in the same run because absolute times on shared machines move by 2x between
days: a bare Celery round trip on the same broker (a no-op task of bench/floor_app.py, an app with
nothing of Laneway, run by its own worker, its result back over the broker) plus one ORM insert and one
conditional update on the same database (`floor`). `ratio_p50` is overhead p50 / floor p50. A stricter
floor without the worker (a message published and read back in this process, plus the same insert and
update) is reported beside it (`broker_floor`, `broker_ratio_p50`).

Then the same through the HTTP API ("api"): POST /api/v1/jobs with a bearer token, and the
end is the signed job.succeeded webhook arriving at a receiver in this process (HTTP → job
row → broker → worker → outbox → webhook worker → receiver), minus the bare pipeline.

    .venv/bin/python bench/overhead.py [--jobs 200] [--modes embedded,redis] [--via form,api]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from harness import Stack, percentile, reset_postgres, run_child

PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/laneway_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
INTENT = "preview"  # the smallest lane: 32x32, 2 steps, so pipeline noise does not drown the overhead


def run_mode(jobs: int) -> dict:
    with Stack(worker_args=("--concurrency", "1")) as stack:
        from websockets.sync.client import connect

        from lanes.engines import EngineCache
        from lanes.models import Job, Route

        lane = Route.objects.get(intent=INTENT).lane
        stack.start()
        session = stack.session()
        ws = connect(
            f"ws://127.0.0.1:{stack.port}/ws/jobs/",
            additional_headers={"Cookie": session.cookie_header, "Origin": f"http://127.0.0.1:{stack.port}"},
        )
        ws.recv(timeout=10)  # the snapshot
        cache = EngineCache(budget_bytes=None)

        phases: list[dict] = []

        def one(seed: int) -> tuple[float, float, float]:
            started = time.perf_counter()
            wall = time.time()
            status, job_id = session.submit(prompt=f"bench {seed}", intent=INTENT, seed=str(seed))
            posted = time.time()
            if status != 302:
                raise RuntimeError(f"submit failed: {status}")
            while True:
                event = json.loads(ws.recv(timeout=60))
                if event.get("job_id") == job_id and event.get("type") == "job.state":
                    if event["state"] == "succeeded":
                        break
                    if event["state"] in ("failed", "cancelled", "rejected"):
                        raise RuntimeError(f"job {job_id} {event['state']}: {event['error']}")
            end_to_end = time.perf_counter() - started
            received = time.time()
            job = Job.objects.get(pk=job_id)
            worker_pipeline = job.run_seconds
            # Where the time went (wall clock of this one machine; DB timestamps are the processes' own).
            phases.append(
                {
                    "http_post": posted - wall,
                    # The row is stamped at admission (submitted_at); its message leaves once it commits.
                    "admitted_to_claim": job.started_at.timestamp() - job.submitted_at.timestamp(),
                    "worker_besides_pipeline": job.finished_at.timestamp()
                    - job.started_at.timestamp()
                    - job.run_seconds,
                    "finish_to_event": received - job.finished_at.timestamp(),
                }
            )
            with cache.use(lane.active_version, width=lane.default_width, height=lane.default_height) as engine:
                bare_started = time.perf_counter()
                engine.run(
                    prompt=f"bench {seed}",
                    seed=seed,
                    width=lane.default_width,
                    height=lane.default_height,
                    steps=lane.default_steps,
                    guidance=lane.default_guidance,
                )
                bare = time.perf_counter() - bare_started
            return end_to_end, bare, worker_pipeline

        for seed in range(5):  # warm-up: the worker loads the pipeline on its first job
            one(10_000 + seed)
        phases.clear()
        rows = [one(seed) for seed in range(jobs)]
        ws.close()
        floors = floor(jobs)

    overhead = [(e2e - bare) * 1000 for e2e, bare, _ in rows]
    overhead_vs_worker = [(e2e - worker) * 1000 for e2e, _, worker in rows]
    return {
        "jobs": jobs,
        "p50_ms": round(percentile(overhead, 50), 2),
        "p95_ms": round(percentile(overhead, 95), 2),
        **floor_figures(floors, overhead),
        "end_to_end_p50_ms": round(percentile([r[0] * 1000 for r in rows], 50), 2),
        "bare_pipeline_p50_ms": round(percentile([r[1] * 1000 for r in rows], 50), 2),
        "worker_pipeline_p50_ms": round(percentile([r[2] * 1000 for r in rows], 50), 2),
        "vs_worker_pipeline_p50_ms": round(percentile(overhead_vs_worker, 50), 2),
        "vs_worker_pipeline_p95_ms": round(percentile(overhead_vs_worker, 95), 2),
        "phases_p50_ms": {k: round(percentile([p[k] * 1000 for p in phases], 50), 2) for k in phases[0]},
    }


def floor(n: int) -> dict[str, list[float]]:
    """The floor, n times, in ms, measured in the same run as the overhead:

    - `floor`: a bare Celery round trip on the same broker (bench/floor_app.py: a task that does nothing,
      sent to a worker of a Celery app with nothing of Laneway, its result back over the broker) plus one
      ORM insert of a job row and one conditional update of it (what a claim does) on the same database;
    - `broker_floor`, stricter: the same without the worker, a message published on Celery's broker
      connection and read back in this process (publish, get, ack), plus the insert and the update."""
    from console.celery import app
    from lanes.models import Job

    template = Job.objects.order_by("-pk").first()
    assert template is not None, "the floor copies a job row: run it after the jobs"
    made: list[int] = []

    def insert_and_claim() -> None:
        template.pk, template.state = None, Job.State.QUEUED
        template.save(force_insert=True)
        Job.objects.filter(pk=template.pk, state=Job.State.QUEUED).update(state=Job.State.RUNNING)
        made.append(template.pk)

    here = os.path.dirname(os.path.abspath(__file__))
    # Without DJANGO_SETTINGS_MODULE: Celery would set Django up in the floor's worker.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["FLOOR_BROKER_URL"] = app.conf.broker_url
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "floor_app", "worker", "--pool", "threads", "--concurrency", "1",
         "--queues", "laneway-floor", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--hostname", f"floor-{os.getpid()}@%h"],
        cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=(log := tempfile.TemporaryFile()),
    )  # fmt: skip
    os.environ["FLOOR_BROKER_URL"] = env["FLOOR_BROKER_URL"]
    sys.path.insert(0, here)
    from floor_app import noop

    celery_times, broker_times = [], []
    try:
        try:
            noop.apply_async().get(timeout=60)  # the worker is up
        except Exception:
            log.seek(0)
            sys.stderr.write("--- the floor's Celery worker\n" + log.read().decode(errors="replace"))
            raise
        for _ in range(10):  # and warm
            noop.apply_async().get(timeout=10)
        for _ in range(n):
            started = time.perf_counter()
            noop.apply_async().get(timeout=10)
            insert_and_claim()
            celery_times.append((time.perf_counter() - started) * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
    with app.connection_for_write() as connection:
        scratch = connection.SimpleQueue("laneway-bench-floor")
        try:
            for i in range(n):
                started = time.perf_counter()
                scratch.put({"n": i})
                scratch.get(timeout=5).ack()
                insert_and_claim()
                broker_times.append((time.perf_counter() - started) * 1000)
        finally:
            scratch.clear()
            scratch.close()
    Job.objects.filter(pk__in=made).delete()
    return {"floor": celery_times, "broker_floor": broker_times}


def floor_figures(floors: dict[str, list[float]], overhead: list[float]) -> dict:
    """p50/p95 of each floor, and overhead p50 over each floor's p50 (`ratio_p50`: over the Celery round trip's)."""
    figures: dict = {}
    for name, prefix in (("floor", ""), ("broker_floor", "broker_")):
        floor_p50 = percentile(floors[name], 50)
        figures[f"{name}_p50_ms"] = round(floor_p50, 2)
        figures[f"{name}_p95_ms"] = round(percentile(floors[name], 95), 2)
        figures[f"{prefix}ratio_p50"] = round(percentile(overhead, 50) / floor_p50, 2)
    return figures


def webhook_receiver() -> tuple[int, queue.Queue]:
    """A local endpoint that records (job id, arrival time) of each delivery."""
    arrivals: queue.Queue = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            arrivals.put((body["type"], body["data"]["id"], time.perf_counter()))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], arrivals


def run_mode_api(jobs: int) -> dict:
    with Stack(worker_args=("--concurrency", "1")) as stack:
        import httpx

        from accounts.models import ApiToken, Member, Team
        from lanes.engines import EngineCache
        from lanes.models import Route
        from webhooks.endpoints import create_endpoint

        lane = Route.objects.get(intent=INTENT).lane
        member = Member.objects.get(user__username="bench")
        member.team = Team.objects.create(name="bench")
        member.save()
        port, arrivals = webhook_receiver()
        create_endpoint(member.team, f"http://127.0.0.1:{port}/hook", ["job.succeeded", "job.failed"], member.user)
        _, secret = ApiToken.issue(member.user, "bench")
        stack.start()
        # The webhooks queue's own worker, as `make run`'s hosted process consumes it.
        stack.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "console",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    "4",
                    "--queues",
                    "webhooks",
                    "--hostname",
                    "webhooks-bench@%h",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                stdout=subprocess.DEVNULL,
                stderr=open(stack.log_dir / "webhooks.log", "w"),
            )  # fmt: skip
        )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.port}", headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )
        cache = EngineCache(budget_bytes=None)

        def one(seed: int) -> tuple[float, float]:
            started = time.perf_counter()
            response = client.post("/api/v1/jobs", json={"prompt": f"bench {seed}", "intent": INTENT, "seed": seed})
            if response.status_code != 202:
                raise RuntimeError(f"submit failed: {response.status_code} {response.text}")
            job_id = response.json()["id"]
            while True:
                kind, delivered_id, at = arrivals.get(timeout=120)
                if delivered_id == job_id:
                    if kind != "job.succeeded":
                        raise RuntimeError(f"job {job_id}: {kind}")
                    break
            end_to_end = at - started
            with cache.use(lane.active_version, width=lane.default_width, height=lane.default_height) as engine:
                bare_started = time.perf_counter()
                engine.run(
                    prompt=f"bench {seed}", seed=seed, width=lane.default_width, height=lane.default_height,
                    steps=lane.default_steps, guidance=lane.default_guidance,
                )  # fmt: skip
                bare = time.perf_counter() - bare_started
            return end_to_end, bare

        for seed in range(5):
            one(10_000 + seed)
        rows = [one(seed) for seed in range(jobs)]
        client.close()
        floors = floor(jobs)
    overhead = [(e2e - bare) * 1000 for e2e, bare in rows]
    return {
        "jobs": jobs,
        "p50_ms": round(percentile(overhead, 50), 2),
        "p95_ms": round(percentile(overhead, 95), 2),
        **floor_figures(floors, overhead),
        "end_to_end_p50_ms": round(percentile([r[0] * 1000 for r in rows], 50), 2),
        "bare_pipeline_p50_ms": round(percentile([r[1] * 1000 for r in rows], 50), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--via", default="form,api", help="form: the console's brief form; api: /api/v1/ + webhook")
    parser.add_argument("--child", choices=("form", "api"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((run_mode if args.child == "form" else run_mode_api)(args.jobs)))
        return
    results, api_results = {}, {}
    for mode in args.modes.split(","):
        env = {"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
        if mode == "redis":
            env.update({"DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL})
        elif mode != "embedded":
            raise SystemExit(f"unknown mode {mode!r}")
        if "api" in args.via.split(","):
            if mode == "redis":
                reset_postgres(PG_URL)
            api_results[mode] = a = json.loads(
                run_child(__file__, ["--child", "api", "--jobs", str(args.jobs)], env, mode)
            )
            print(
                f"{mode:9s} API n={a['jobs']} overhead (POST /api/v1/jobs → job.succeeded webhook received - bare "
                f"pipeline): p50 {a['p50_ms']} ms, p95 {a['p95_ms']} ms | floor p50 {a['floor_p50_ms']} ms, "
                f"overhead/floor {a['ratio_p50']} (broker-only floor {a['broker_floor_p50_ms']} ms, "
                f"{a['broker_ratio_p50']}) | end-to-end p50 {a['end_to_end_p50_ms']} ms, "
                f"bare pipeline p50 {a['bare_pipeline_p50_ms']} ms",
                file=sys.stderr,
            )
        if "form" not in args.via.split(","):
            continue
        if mode == "redis":
            reset_postgres(PG_URL)
        results[mode] = r = json.loads(run_child(__file__, ["--child", "form", "--jobs", str(args.jobs)], env, mode))
        print(
            f"{mode:9s} n={r['jobs']} overhead (end-to-end - bare pipeline): p50 {r['p50_ms']} ms, "
            f"p95 {r['p95_ms']} ms | floor p50 {r['floor_p50_ms']} ms, overhead/floor {r['ratio_p50']} "
            f"(broker-only floor {r['broker_floor_p50_ms']} ms, {r['broker_ratio_p50']}) | "
            f"end-to-end p50 {r['end_to_end_p50_ms']} ms, bare pipeline p50 "
            f"{r['bare_pipeline_p50_ms']} ms, pipeline inside the worker p50 {r['worker_pipeline_p50_ms']} ms | "
            f"end-to-end - the worker's own pipeline time: p50 {r['vs_worker_pipeline_p50_ms']} ms, "
            f"p95 {r['vs_worker_pipeline_p95_ms']} ms | phases p50 (ms): {r['phases_p50_ms']}",
            file=sys.stderr,
        )
    summary = {"bench": "overhead"}
    keys = ("p50_ms", "p95_ms", "floor_p50_ms", "ratio_p50", "broker_floor_p50_ms", "broker_ratio_p50")
    summary.update({m: {k: results[m][k] for k in keys} for m in results})
    summary.update({f"{m}_api": {k: a[k] for k in keys} for m, a in api_results.items()})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
