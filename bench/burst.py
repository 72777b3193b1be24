"""A burst of 3x the fleet's capacity of mixed-priority briefs, admission control on and off.

One CPU worker runs the tiny pipeline, with the pool `manage.py gpu_worker` sizes by default (one
thread per slot of the lanes it serves, plus one). The intents of all three priority classes share
one lane (final: critical, draft: standard, preview: background), with a cheaper fallback
lane, as in the incident that motivated Laneway. Each scenario runs in a fresh stack:

- unloaded: critical briefs one at a time on an idle fleet (kept for continuity);
- alone: the burst's own critical arrivals, at the same times with the same seeds, and
  nothing else: what critical latency would be if the rest of the burst did not exist;
- admission_on / admission_off: the same seeded burst, submitted over HTTP at three times
  the rate the fleet can serve, with ADMISSION_CONTROL on or off (step-boundary preemption on);
- on_no_preempt: admission on, PREEMPTION=false.

"alone" runs twice, right before and right after admission_on, and its p95 is the mean of the two: this
machine's speed drifts by ±20 % over minutes, and an A-B-A order keeps that drift out of the ratio. The
burst is 240 briefs (about 56 critical ones) so that a p95 is not the second-slowest of a handful.

The worker stands in for a GPU (`--pin`, the default): it gets half of the CPUs to itself and the web
server, broker and load generator the other half (bench/harness.py). Unpinned on two cores, the burst's
HTTP traffic runs on the CPUs that render, which no GPU host does; `--no-pin` measures that layout.

Latency is the job's finished_at - submitted_at. Prints per-class p50/p95 and the counts,
then one line of JSON. `--runs N` repeats the whole set and prints a JSON line per run.

    .venv/bin/python bench/burst.py [--briefs 240] [--runs 3] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from harness import Stack, percentile, run_child

MIX = [("final", "critical", 0.2), ("draft", "standard", 0.5), ("preview", "background", 0.3)]
UNLOADED_RUNS = 20


def shape_lanes() -> None:
    from lanes.models import Lane, Route

    shared = Lane.objects.get(name="final-render")
    shared.default_width = shared.default_height = 64
    shared.default_steps, shared.max_concurrency, shared.defer_depth, shared.hard_cap = 8, 2, 4, 40
    shared.latency_slo_ms = 600_000  # admission here is by depth, so every run sees the same rules
    shared.fallback = Lane.objects.get(name="fallback")
    shared.save()
    fallback = shared.fallback
    fallback.default_steps, fallback.max_concurrency, fallback.defer_depth, fallback.hard_cap = 2, 1, 4, 40
    fallback.latency_slo_ms = 600_000
    fallback.save()
    Route.objects.filter(intent__in=["final", "draft", "preview"]).update(lane=shared)


def wait_all(job_ids: list[int], timeout: float) -> None:
    from lanes.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Job.objects.filter(pk__in=job_ids).exclude(state__in=Job.TERMINAL).exists():
            return
        time.sleep(0.2)


def run(scenario: str, briefs: int, rate: float, pin: bool) -> dict:
    with Stack(worker_args=(), pin=pin) as stack:
        from lanes.models import Job

        shape_lanes()
        stack.start()
        session = stack.session()
        status, warm = session.submit(prompt="warm-up", intent="final")
        wait_all([warm], 120)
        Job.objects.all().delete()
        if scenario == "unloaded":
            ids = []
            for i in range(UNLOADED_RUNS):
                _, job_id = session.submit(prompt=f"alone {i}", intent="final", seed=str(i))
                wait_all([job_id], 60)
                ids.append(job_id)
            jobs = list(Job.objects.filter(pk__in=ids))
            latencies = [(j.finished_at - j.submitted_at).total_seconds() for j in jobs if j.state == "succeeded"]
            # Capacity: the throughput of the shared lane kept full (slots share the same cores).
            started = time.monotonic()
            batch = [session.submit(prompt=f"full {i}", intent="final", seed=str(i))[1] for i in range(UNLOADED_RUNS)]
            wait_all(batch, 300)
            throughput = len(batch) / (time.monotonic() - started)
            return {
                "critical_p95_s": percentile(latencies, 95),
                "critical_p50_s": percentile(latencies, 50),
                "capacity_per_s": throughput,
            }

        rng = random.Random(7)
        plan = rng.choices([(intent, cls) for intent, cls, _ in MIX], weights=[w for *_, w in MIX], k=briefs)
        ids, rejected = [], {cls: 0 for _, cls, _ in MIX}
        started = time.monotonic()
        for n, (intent, cls) in enumerate(plan):
            if scenario == "alone" and cls != "critical":
                continue  # the same critical arrivals, at the same times, and nothing else
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            status, job_id = session.submit(prompt=f"burst {n}", intent=intent, seed=str(n))
            if status == 429:
                rejected[cls] += 1
            elif status != 302:
                raise RuntimeError(f"submit returned {status}")
            if job_id:
                ids.append(job_id)
        wait_all(ids, 300)
        jobs = list(Job.objects.filter(pk__in=ids).select_related("lane"))
        result = {"briefs": briefs, "rate_per_s": rate, "classes": {}}
        for _, cls, _ in MIX:
            mine = [j for j in jobs if j.priority == cls]
            done = [(j.finished_at - j.submitted_at).total_seconds() for j in mine if j.state == "succeeded"]
            result["classes"][cls] = {
                "submitted": sum(1 for _, c in plan if c == cls and (scenario != "alone" or c == "critical")),
                "succeeded": len(done),
                "p50_s": round(percentile(done, 50), 3),
                "p95_s": round(percentile(done, 95), 3),
                "deferred": sum(1 for j in mine if j.deferred_at is not None),
                "rerouted": sum(1 for j in mine if j.admission == "rerouted"),
                "rejected": rejected[cls],
                "failed": sum(1 for j in mine if j.state == "failed"),
            }
        # Where critical time went: submitted -> a worker claimed it (admission, broker, a pool thread, a
        # slot), then claimed -> finished (loading, rendering beside other work, pauses, storing).
        critical = [j for j in jobs if j.priority == "critical" and j.state == "succeeded"]

        def p50(values: list[float]) -> float:
            return round(percentile(values, 50), 3)

        result["critical_phases_p50_s"] = {
            "to_claim": p50([(j.started_at - j.submitted_at).total_seconds() for j in critical]),
            "claim_to_done": p50([(j.finished_at - j.started_at).total_seconds() for j in critical]),
            "run": p50([j.run_seconds or 0 for j in critical]),
        }
        result["ooms"] = sum(j.oom_count for j in jobs)
        result["preemptions"] = sum(j.preemptions for j in jobs)
        result["lost_jobs"] = sum(1 for j in jobs if j.state not in Job.TERMINAL)
        return result


SCENARIOS = (
    ("alone", {"ADMISSION_CONTROL": "true"}),
    ("admission_on", {"ADMISSION_CONTROL": "true", "PREEMPTION": "true"}),
    ("alone_again", {"ADMISSION_CONTROL": "true"}),  # A-B-A: see the module docstring
    ("admission_off", {"ADMISSION_CONTROL": "false", "PREEMPTION": "true"}),
    ("on_no_preempt", {"ADMISSION_CONTROL": "true", "PREEMPTION": "false"}),
)


def one_run(briefs: int, pin: bool) -> dict:
    pinning = ["--pin" if pin else "--no-pin"]
    unloaded = json.loads(run_child(__file__, ["--child", "unloaded", *pinning], {}, "unloaded"))
    rate = 3 * unloaded["capacity_per_s"]
    print(
        f"unloaded: critical p50 {unloaded['critical_p50_s']:.3f} s, p95 {unloaded['critical_p95_s']:.3f} s; "
        f"fleet capacity {unloaded['capacity_per_s']:.2f} jobs/s -> burst at {rate:.2f} briefs/s",
        file=sys.stderr,
    )
    results = {}
    for scenario, env in SCENARIOS:
        mode = "alone" if scenario == "alone_again" else scenario
        line = run_child(
            __file__, ["--child", mode, "--briefs", str(briefs), "--rate", str(rate), *pinning], env, scenario
        )
        results[scenario] = r = json.loads(line)
        print(
            f"{scenario}: ooms {r['ooms']}, lost {r['lost_jobs']}, preemptions {r['preemptions']}, "
            f"critical p50 phases (s) {r['critical_phases_p50_s']}",
            file=sys.stderr,
        )
        for cls, c in r["classes"].items():
            if c["submitted"]:
                print(
                    f"  {cls:10s} n={c['submitted']:3d} ok={c['succeeded']:3d} "
                    f"p50 {c['p50_s']:.3f} s p95 {c['p95_s']:.3f} s "
                    f"deferred {c['deferred']} rerouted {c['rerouted']} rejected {c['rejected']} failed {c['failed']}",
                    file=sys.stderr,
                )
    burst = [name for name, _ in SCENARIOS if not name.startswith("alone")]
    alone_each = [results[name]["classes"]["critical"]["p95_s"] for name in ("alone", "alone_again")]
    critical = {name: results[name]["classes"]["critical"]["p95_s"] for name in burst}
    alone = round(sum(alone_each) / 2, 3)
    print(
        f"critical p95: alone {alone_each[0]:.3f} / {alone_each[1]:.3f} s (mean {alone:.3f}), "
        f"admission on {critical['admission_on']:.3f} s, off {critical['admission_off']:.3f} s: "
        f"on/alone {critical['admission_on'] / alone:.2f}x, "
        f"on/off {critical['admission_on'] / critical['admission_off']:.2f}x",
        file=sys.stderr,
    )
    return {
        "bench": "burst",
        "critical_p95_s": {"alone": alone, "unloaded": round(unloaded["critical_p95_s"], 3), **critical},
        "alone_p95_s_each": alone_each,
        "pinned": pin,
        "standard_p95_s": {name: results[name]["classes"]["standard"]["p95_s"] for name in burst},
        "background_p95_s": {name: results[name]["classes"]["background"]["p95_s"] for name in burst},
        "preemptions": results["admission_on"]["preemptions"],
        "lost_jobs": sum(r["lost_jobs"] for r in results.values()),
        "ooms": sum(r["ooms"] for r in results.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--briefs", type=int, default=240)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the worker half of the CPUs to itself, as a GPU host's renders run on the device (default)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.briefs, args.rate, args.pin)))
        return
    for _ in range(args.runs):
        print(json.dumps(one_run(args.briefs, args.pin)), flush=True)


if __name__ == "__main__":
    main()
