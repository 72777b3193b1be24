"""Does an A/B experiment starve production traffic? Production latency with and without one.

One CPU worker runs the tiny pipeline. Production is a steady stream of standard `draft`
briefs over HTTP at half the lane's measured capacity. Each scenario runs in a fresh stack:

- alone: the production stream by itself;
- experiment: the same stream while an experiment (2 arms × 10 prompts × 3 seeds on the
  same lane) runs through Laneway's harness: background priority, fed a few at a time;
- naive: the same stream while the same 60 renders are submitted at once as ordinary
  standard briefs (what one would do without the harness).

Latency is finished_at - submitted_at of the production jobs. Prints p50/p95 per scenario,
the ratios against `alone` measured in the same run, and how long the experiment took;
then one line of JSON.

    .venv/bin/python bench/experiment.py [--briefs 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness import Stack, percentile, run_child

EXPERIMENT = """\
name: bench
samples: 3
prompts: [{prompts}]
arms:
  - {{name: a, lane: fast-draft}}
  - {{name: b, lane: fast-draft, steps: 2}}
"""
PROMPTS = 10


def shape_lane() -> None:
    from lanes.models import Lane

    Lane.objects.filter(name="fast-draft").update(
        max_concurrency=2, defer_depth=4, hard_cap=200, latency_slo_ms=600_000, default_steps=4
    )


def wait_all(job_ids, timeout: float) -> None:
    from lanes.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Job.objects.filter(pk__in=job_ids).exclude(state__in=Job.TERMINAL).exists():
            return
        time.sleep(0.2)
    raise RuntimeError("jobs did not finish")


def run(scenario: str, briefs: int, rate: float) -> dict:
    with Stack(worker_args=("--concurrency", "4")) as stack:
        from django.contrib.auth import get_user_model

        from experiments import definition as definitions
        from experiments import runner
        from experiments.models import Experiment
        from lanes.actions import submit_brief
        from lanes.models import Job, Lane, Priority

        shape_lane()
        stack.start()
        session = stack.session()
        _, warm = session.submit(prompt="warm-up", intent="draft")
        wait_all([warm], 120)
        Job.objects.all().delete()
        if scenario == "capacity":
            started = time.monotonic()
            ids = [session.submit(prompt=f"full {i}", intent="draft", seed=str(i))[1] for i in range(30)]
            wait_all(ids, 300)
            return {"capacity_per_s": len(ids) / (time.monotonic() - started)}

        admin = get_user_model().objects.create_superuser("bench-admin", password="bench-admin-1")
        started = time.monotonic()
        if scenario == "experiment":
            prompts = ", ".join(f'"experiment poster {i}"' for i in range(PROMPTS))
            experiment = runner.create(admin, definitions.parse(EXPERIMENT.format(prompts=prompts)))
        elif scenario == "naive":
            lane = Lane.objects.get(name="fast-draft")
            for i in range(PROMPTS * 3 * 2):
                submit_brief(
                    admin, prompt=f"experiment poster {i}", intent="draft", lane=lane, seed=i,
                    steps=4 if i % 2 else 2, priority=Priority.STANDARD,
                )  # fmt: skip
        ids = []
        for n in range(briefs):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            status, job_id = session.submit(prompt=f"production {n}", intent="draft", seed=str(n))
            if status != 302:
                raise RuntimeError(f"submit returned {status}")
            ids.append(job_id)
        wait_all(ids, 600)
        production = list(Job.objects.filter(pk__in=ids))
        latencies = [(j.finished_at - j.submitted_at).total_seconds() for j in production if j.state == "succeeded"]
        others = Job.objects.exclude(pk__in=ids)
        wait_all(list(others.values_list("pk", flat=True)), 600)
        finished = others.order_by("-finished_at").values_list("finished_at", flat=True).first()
        result = {
            "production_p50_s": round(percentile(latencies, 50), 3),
            "production_p95_s": round(percentile(latencies, 95), 3),
            "production_ok": len(latencies),
            "production_deferred": sum(1 for j in production if j.admission == "deferred"),
            "production_rerouted": sum(1 for j in production if j.admission == "rerouted"),
        }
        if scenario != "alone":
            first = Job.objects.exclude(pk__in=ids).order_by("submitted_at").values_list("submitted_at", flat=True)[0]
            result["other_jobs"] = others.count()
            result["other_seconds"] = round((finished - first).total_seconds(), 1)
        if scenario == "experiment":
            result["experiment_state"] = Experiment.objects.get(pk=experiment.pk).state
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--briefs", type=int, default=60)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.briefs, args.rate)))
        return

    capacity = json.loads(run_child(__file__, ["--child", "capacity"], {}, "capacity"))["capacity_per_s"]
    rate = capacity / 2
    print(f"lane capacity {capacity:.2f} jobs/s -> production at {rate:.2f} briefs/s", file=sys.stderr)
    results = {}
    for scenario in ("alone", "experiment", "naive"):
        line = run_child(
            __file__, ["--child", scenario, "--briefs", str(args.briefs), "--rate", str(rate)], {}, scenario
        )
        results[scenario] = r = json.loads(line)
        extra = f", 60 other renders done in {r['other_seconds']} s" if "other_seconds" in r else ""
        print(
            f"{scenario:10s} production p50 {r['production_p50_s']:.3f} s p95 {r['production_p95_s']:.3f} s "
            f"(ok {r['production_ok']}, deferred {r['production_deferred']}, "
            f"rerouted {r['production_rerouted']}){extra}",
            file=sys.stderr,
        )
    alone = results["alone"]["production_p95_s"]
    print(
        json.dumps(
            {
                "bench": "experiment",
                "production_p95_s": {name: r["production_p95_s"] for name, r in results.items()},
                "p95_ratio_vs_alone": {
                    name: round(r["production_p95_s"] / alone, 2) for name, r in results.items() if name != "alone"
                },
                "experiment_seconds": results["experiment"].get("other_seconds"),
                "naive_seconds": results["naive"].get("other_seconds"),
            }
        )
    )


if __name__ == "__main__":
    main()
