"""Telemetry fan-out: 200 dashboard websocket clients while 8 simulated GPUs publish at 1 Hz.

Per mode (redis: an external Redis as channel layer; embedded: the embedded Valkey), a
uvicorn serves the ASGI app; --clients sockets, spread over --client-procs processes (as
browsers would be), connect to /ws/telemetry/ as a signed-in user; this process publishes
--gpus GPU samples per second through the same push path a worker uses. Each client
records delivery lag (receive time - sample time, one machine's clock). Prints p50/p95
lag and the server's CPU, then one line of JSON.

    .venv/bin/python bench/fanout.py [--clients 200] [--gpus 8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
from harness import Stack, percentile, run_child

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


async def listen(port: int, cookie: str, n: int, until: float) -> list[float]:
    """n sockets; prints 'ready' once all are connected; returns every sample's delivery lag."""
    from websockets.asyncio.client import connect

    lags: list[float] = []
    connected = asyncio.Event()
    count = 0

    async def one() -> None:
        nonlocal count
        headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
        async with connect(f"ws://127.0.0.1:{port}/ws/telemetry/", additional_headers=headers, open_timeout=60) as ws:
            await ws.recv()  # the snapshot
            count += 1
            if count == n:
                connected.set()
            async for message in ws:
                received = time.time()
                event = json.loads(message)
                if event.get("type") == "gpu.sample":
                    lags.append(received - float(event["taken_at"]))

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.wait_for(connected.wait(), timeout=120)
    print("ready", flush=True)
    await asyncio.sleep(max(0.0, until - time.time()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return lags


def sample(gpu: int) -> SimpleNamespace:
    sent = time.time()
    return SimpleNamespace(
        taken_at=SimpleNamespace(isoformat=lambda: str(sent)),
        running_jobs=1,
        gpu_index=gpu,
        name="simulated",
        utilization_pct=50.0,
        memory_used_bytes=1,
        memory_total_bytes=2,
        temperature_c=40.0,
        power_w=300.0,
    )


def run(n_clients: int, gpus: int, seconds: float, procs: int, web_workers: int) -> dict:
    with Stack() as stack:
        from telemetry import push

        stack.start(worker=False, web_workers=web_workers)
        session = stack.session()
        server = psutil.Process(stack.procs[0].pid)

        def server_cpu() -> float:
            processes = [server, *server.children(recursive=True)]
            return sum(p.cpu_times().user + p.cpu_times().system for p in processes)

        until = time.time() + 60 + seconds + 5
        listeners = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--listen",
                    str(stack.port),
                    "--cookie",
                    session.cookie_header,
                    "--clients",
                    str(n_clients // procs + (i < n_clients % procs)),
                    "--until",
                    str(until),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(procs)
        ]
        for listener in listeners:
            if listener.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process failed to connect")
        cpu_before, wall_before = server_cpu(), time.monotonic()
        sent = 0
        for _ in range(int(seconds)):
            started = time.monotonic()
            for gpu in range(gpus):
                push.gpu_samples(f"sim-{gpu}", [sample(gpu)])
                sent += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        time.sleep(2)
        cpu_after, wall_after = server_cpu(), time.monotonic()
        lags: list[float] = []
        for listener in listeners:
            out, _ = listener.communicate(timeout=until - time.time() + 60)
            lags.extend(json.loads(out.strip().splitlines()[-1]))
        cpu = (cpu_after - cpu_before) / (wall_after - wall_before)
        return {
            "clients": n_clients,
            "gpus": gpus,
            "delivered": len(lags),
            "expected": sent * n_clients,
            "p50_ms": round(percentile(lags, 50) * 1000, 1),
            "p95_ms": round(percentile(lags, 95) * 1000, 1),
            "server_cpu_pct": round(100 * cpu, 1),
            "web_workers": web_workers,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--web-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--modes", default="redis,embedded")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cookie", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        print(json.dumps(asyncio.run(listen(args.listen, args.cookie, args.clients, args.until))))
        return
    if args.child:
        print(json.dumps(run(args.clients, args.gpus, args.seconds, args.client_procs, args.web_workers)))
        return
    results = {}
    for mode in args.modes.split(","):
        env = {"REDIS_URL": REDIS_URL} if mode == "redis" else {}
        argv = ["--child", "--clients", str(args.clients), "--gpus", str(args.gpus), "--seconds", str(args.seconds),
                "--client-procs", str(args.client_procs), "--web-workers", str(args.web_workers)]  # fmt: skip
        results[mode] = r = json.loads(run_child(__file__, argv, env, mode))
        print(
            f"{mode:9s}: {r['clients']} clients, {r['gpus']} GPUs at 1 Hz: delivered {r['delivered']}/{r['expected']}, "
            f"lag p50 {r['p50_ms']} ms p95 {r['p95_ms']} ms, server CPU {r['server_cpu_pct']}%",
            file=sys.stderr,
        )
    summary = {"bench": "fanout"}
    for mode, r in results.items():
        summary[mode] = {"p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "server_cpu_pct": r["server_cpu_pct"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
