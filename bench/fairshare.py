"""Two teams on one lane: a big batch against a steady trickle, fair share against FIFO.

One worker process with one slot on the lane (the tiny pipeline on CPU). The batch team
submits `--batch` standard briefs as fast as the console takes them; the trickle team submits
standard briefs of the same class at 10 % of the lane's measured capacity for as long as
the batch lasts. Each scenario runs in a fresh stack:

- alone: the trickle only (its latency without competition);
- fair / fifo: batch and trickle together, with FAIR_SHARE on or off.

The lane's defer depth and hard cap leave room for the whole batch in its queue (the issue's
case: a batch queued ahead of every other team's briefs of its class; with a small defer
depth, admission already defers the batch and a trickle brief is queued ahead of it), and
it has no fallback: fair share decides which queued job the worker takes. Latency is finished_at - submitted_at; the
batch's time is from its first submission to its last job's finish. Prints the figures
per scenario, then one line of JSON.

    .venv/bin/python bench/fairshare.py [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time

from harness import Session, Stack, percentile, run_child

LANE = "fast-draft"
CALIBRATION_JOBS = 20
TRICKLE_SHARE = 0.10


def shape(queue_room: int) -> None:
    from django.contrib.auth import get_user_model

    from accounts.models import Member, Role, Team
    from lanes.models import Lane

    # Room for the whole batch in the queue (the case: a batch queued ahead of everyone's
    # briefs), no fallback (one lane), and an SLO of a day: admission defers nothing, whatever the load.
    Lane.objects.filter(name=LANE).update(
        max_concurrency=1, fallback=None, latency_slo_ms=86_400_000, defer_depth=queue_room, hard_cap=queue_room
    )
    for name in ("batch", "trickle"):
        user = get_user_model().objects.create_user(name, password=f"{name}-password-1")
        Member.objects.create(user=user, role=Role.CREATIVE, team=Team.objects.create(name=name))


def login(stack: Stack, name: str) -> Session:
    session = Session(stack.port)
    session.login(name, f"{name}-password-1")
    return session


def wait_all(job_ids: list[int], timeout: float) -> None:
    from lanes.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Job.objects.filter(pk__in=job_ids).exclude(state__in=Job.TERMINAL).exists():
            return
        time.sleep(0.25)


def submit(session: Session, prompt: str, seed: int) -> int:
    status, job_id = session.submit(prompt=prompt, intent="draft", seed=str(seed))
    if status != 302 or job_id is None:
        raise RuntimeError(f"submit returned {status}")
    return job_id


def run(scenario: str, batch: int, rate: float, trickle: int) -> dict:
    with Stack(worker_args=("--concurrency", "4")) as stack:
        from lanes.models import Job

        shape(batch + trickle + CALIBRATION_JOBS + 10)
        stack.start()
        batch_session, trickle_session = login(stack, "batch"), login(stack, "trickle")
        wait_all([submit(trickle_session, "warm-up", 0)], 120)
        Job.objects.all().delete()
        if scenario == "calibrate":  # the lane kept full: jobs per second from the first start to the last finish
            ids = [submit(batch_session, f"full {i}", i) for i in range(CALIBRATION_JOBS)]
            wait_all(ids, 300)
            runs = Job.objects.filter(pk__in=ids, state=Job.State.SUCCEEDED)
            first, last = min(j.started_at for j in runs), max(j.finished_at for j in runs)
            return {"capacity_per_s": len(runs) / (last - first).total_seconds()}

        batch_ids: list[int] = []
        errors: list[BaseException] = []

        def submit_batch() -> None:
            try:
                for i in range(batch):
                    batch_ids.append(submit(batch_session, f"batch {i}", i))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        started = time.monotonic()
        submitter = threading.Thread(target=submit_batch) if scenario != "alone" else None
        if submitter:
            submitter.start()
        trickle_ids = []
        for n in range(trickle):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            trickle_ids.append(submit(trickle_session, f"trickle {n}", 10_000 + n))
        if submitter:
            submitter.join()
        if errors:
            raise errors[0]
        wait_all(batch_ids + trickle_ids, 1800)
        jobs = {job.pk: job for job in Job.objects.filter(pk__in=batch_ids + trickle_ids)}
        done = [jobs[pk] for pk in trickle_ids if jobs[pk].state == Job.State.SUCCEEDED]
        latencies = [(job.finished_at - job.submitted_at).total_seconds() for job in done]
        result = {
            "trickle_p50_s": round(percentile(latencies, 50), 3),
            "trickle_p95_s": round(percentile(latencies, 95), 3),
            "trickle": len(trickle_ids),
            "batch": len(batch_ids),
            "deferred": {
                team: sum(1 for pk in ids if jobs[pk].deferred_at is not None)
                for team, ids in (("batch", batch_ids), ("trickle", trickle_ids))
            },
            "lost": sum(1 for job in jobs.values() if job.state != Job.State.SUCCEEDED)
            + (len(batch_ids) + len(trickle_ids) - len(jobs)),
            "ran_twice": sum(1 for job in jobs.values() if job.attempts > 1),
        }
        if batch_ids:
            finished = max(jobs[pk].finished_at for pk in batch_ids if jobs[pk].finished_at)
            first = min(jobs[pk].submitted_at for pk in batch_ids)
            result["batch_done_s"] = round((finished - first).total_seconds(), 2)
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--trickle", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.batch, args.rate, args.trickle)))
        return

    capacity = json.loads(run_child(__file__, ["--child", "calibrate"], {}, "calibrate"))["capacity_per_s"]
    rate = TRICKLE_SHARE * capacity
    # The trickle lasts as long as the batch would alone: batch / capacity seconds at 10 % of capacity.
    trickle = max(10, math.ceil(TRICKLE_SHARE * args.batch))
    print(
        f"lane capacity {capacity:.2f} jobs/s: trickle of {trickle} briefs at {rate:.3f}/s, batch of {args.batch}",
        file=sys.stderr,
    )
    results = {}
    for scenario, flag in (("alone", "true"), ("fair", "true"), ("fifo", "false")):
        child = ["--child", scenario, "--batch", str(args.batch), "--rate", str(rate), "--trickle", str(trickle)]
        results[scenario] = r = json.loads(run_child(__file__, child, {"FAIR_SHARE": flag}, scenario))
        print(f"{scenario}: {json.dumps(r)}", file=sys.stderr)
    alone = results["alone"]["trickle_p95_s"]
    for scenario in ("fair", "fifo"):
        print(f"{scenario}: trickle p95 {results[scenario]['trickle_p95_s'] / alone:.2f}x alone", file=sys.stderr)
    growth = results["fair"]["batch_done_s"] / results["fifo"]["batch_done_s"] - 1
    print(f"batch time with fair share vs FIFO: {growth * 100:+.1f} %", file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "fairshare",
                "trickle_p95_s": {
                    scenario: results[scenario]["trickle_p95_s"] for scenario in ("alone", "fair", "fifo")
                },
                "batch_done_s": {scenario: results[scenario]["batch_done_s"] for scenario in ("fair", "fifo")},
                "lost": sum(results[scenario]["lost"] + results[scenario]["ran_twice"] for scenario in results),
            }
        )
    )


if __name__ == "__main__":
    main()
