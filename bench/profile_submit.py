"""Where the HTTP POST of a brief spends its time.

For each mode (embedded: SQLite + embedded Valkey; redis: PostgreSQL + Redis) it starts the web
process as `make run` does (uvicorn serving the ASGI app; no worker, so the jobs stay queued) and
times N `POST /briefs/new/` over HTTP from a logged-in session. Then the same POST N times in this
process through Django's handler alone (the test client: no socket, no ASGI, no thread hop; CSRF not
checked), and once more under cProfile. The difference between the two is what uvicorn, ASGI and
the hop to the view's thread cost. It runs once with HTTP served through Django's ASGI handler and
once through its WSGI handler wrapped for ASGI (LANEWAY_HTTP_HANDLER, see console.asgi). Each job is
marked finished after its POST (untimed), so
admission sees the same empty lane every time. Prints medians and the functions with the most
cumulative time, then one line of JSON.

    .venv/bin/python bench/profile_submit.py [--posts 200] [--modes embedded,redis] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

from harness import Stack, percentile, reset_postgres, run_child

PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/laneway_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
INTENT = "preview"
HANDLERS = ("asgi", "wsgi")  # LANEWAY_HTTP_HANDLER: both in one run (console.asgi)


def run_mode(posts: int, top: int) -> dict:
    with Stack() as stack:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from lanes.models import Job

        def finish_all() -> None:
            Job.objects.exclude(state__in=Job.TERMINAL).update(state=Job.State.SUCCEEDED)

        stack.start(worker=False)
        session = stack.session()
        over_http = []
        for n in range(posts + 20):  # the first 20 warm the web process up
            started = time.perf_counter()
            status, _ = session.submit(prompt=f"profile {n}", intent=INTENT, seed=str(n))
            took = time.perf_counter() - started
            if status != 302:
                raise RuntimeError(f"submit returned {status}")
            finish_all()
            if n >= 20:
                over_http.append(took * 1000)

        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(get_user_model().objects.get(username="bench"))

        def post(n: int) -> float:
            started = time.perf_counter()
            response = client.post("/briefs/new/", {"prompt": f"in process {n}", "intent": INTENT, "seed": str(n)})
            took = time.perf_counter() - started
            if response.status_code != 302:
                raise RuntimeError(f"submit returned {response.status_code}")
            finish_all()
            return took * 1000

        for n in range(20):
            post(n)
        in_process = [post(n) for n in range(posts)]
        profile = cProfile.Profile()
        for n in range(posts):
            profile.enable()
            client.post("/briefs/new/", {"prompt": f"profiled {n}", "intent": INTENT, "seed": str(n)})
            profile.disable()
            finish_all()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    return {
        "posts": posts,
        "http_p50_ms": round(percentile(over_http, 50), 2),
        "http_p95_ms": round(percentile(over_http, 95), 2),
        "handler_p50_ms": round(percentile(in_process, 50), 2),
        "handler_p95_ms": round(percentile(in_process, 95), 2),
        "profile": out.getvalue(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.posts, args.top)))
        return
    summary: dict = {"bench": "profile_submit"}
    for mode in args.modes.split(","):
        env = {}
        if mode == "redis":
            env.update({"DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL})
        elif mode != "embedded":
            raise SystemExit(f"unknown mode {mode!r}")
        summary[mode] = {}
        for handler in HANDLERS:
            if mode == "redis":
                reset_postgres(PG_URL)
            child_args = ["--child", "--posts", str(args.posts), "--top", str(args.top)]
            result = json.loads(run_child(__file__, child_args, {**env, "LANEWAY_HTTP_HANDLER": handler}, mode))
            profile = result.pop("profile")
            if handler == HANDLERS[-1]:
                print(f"--- {mode}: cProfile of {args.posts} in-process POSTs, by cumulative time", file=sys.stderr)
                print(profile, file=sys.stderr)
            print(
                f"{mode}, HTTP through Django's {handler.upper()} handler: POST /briefs/new/ over HTTP p50 "
                f"{result['http_p50_ms']} ms, p95 {result['http_p95_ms']} ms | Django's handler alone p50 "
                f"{result['handler_p50_ms']} ms, p95 {result['handler_p95_ms']} ms | the server's share p50 "
                f"{result['http_p50_ms'] - result['handler_p50_ms']:.2f} ms",
                file=sys.stderr,
            )
            summary[mode][handler] = result
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
