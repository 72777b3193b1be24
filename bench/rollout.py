"""Progressive rollouts under steady traffic: does a bad version stop before it hurts briefs?

Each case runs in a fresh stack (web, one CPU `gpu_worker`; the flags case adds the verifier, the
hosted-engine worker and the demo images API, as `make run` starts them). Draft briefs arrive over
HTTP at half the lane's measured capacity while a version is rolled out on the draft lane with a
3-step plan (20 % → 40 % → 60 %, 8 jobs each, then 100 %). Beat's rollout check
(`progressive.check_rollouts`) is run by this script every second, as beat runs it with
CANARY_CHECK_EVERY=1.

- corrupt: a copy of the demo checkpoint, validated (the smoke render runs in this process, so the
  serving worker first loads it for a canary job), then its UNet weights truncated on disk after the
  rollout starts;
- slow: a checkpoint whose UNet is wider and deeper (about 3x the run time on this CPU);
- flags: the lane serves the demo hosted engine, which sets the brief's text legibly; the rolled-out
  version is the tiny random-weight SD, whose images carry no legible text. Its plan checks text only
  (the two versions run on different engines, so run-time ratios say nothing about quality);
- good: the demo's second checkpoint (other random weights, same architecture).

Per case: user_failures (briefs that failed), after_verdict (briefs that failed, or rendered on the
rolled-out version, after the verdict), verdict_s (rollout start to its end), repinned (waiting jobs
moved off the version), retried (jobs retried on the serving version after a failed load), and the
outcome; for good, whether it was promoted untouched (no person paused, skipped or aborted).

    .venv/bin/python bench/rollout.py [--case corrupt]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, Stack, run_child

CASES = ("corrupt", "slow", "flags", "good")
# Small enough to run in minutes; 8 jobs a side keeps one slow outlier from being each arm's p95.
PLAN = "steps:\n- {percent: 20, min_samples: 8}\n- {percent: 40, min_samples: 8}\n- {percent: 60, min_samples: 8}\n"
TEXT_ONLY = "thresholds: {max_p95_ratio: 100, max_gpu_seconds_ratio: 100, max_error_rate_increase: 0.2}\n"
CASE_TIMEOUT_S = 240


def build_slow_checkpoint(target: Path, base: Path) -> None:
    """The demo pipeline with a wider, deeper UNet (random weights), saved the way every checkpoint is."""
    import torch  # heavy: only when the slow case runs
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    config = dict(pipe.unet.config)
    config.update(block_out_channels=(64, 128), layers_per_block=2)
    torch.manual_seed(3)
    pipe.unet = UNet2DConditionModel.from_config(config).eval()
    pipe.save_pretrained(target)


def register(name: str, location: str):
    """Register and validate (hash + smoke render, here in this process) a version of the files at location."""
    from lanes import registry
    from lanes.models import ModelVersion

    version = ModelVersion.objects.create(name=name, location=location)
    if not registry.run_validation(version, worker="bench"):
        raise RuntimeError(f"{name} failed validation: {ModelVersion.objects.get(pk=version.pk).validation_error}")
    return ModelVersion.objects.get(pk=version.pk)


def extra_processes(stack: Stack) -> None:
    """The verifier, the hosted-engine worker and the demo images API (the flags case needs all three)."""
    env = {**os.environ, "LANEWAY_DEMO_API_KEY": "demo-key"}
    celery = [sys.executable, "-m", "celery", "-A", "console", "worker", "--pool", "threads", "--loglevel", "WARNING"]
    commands = [
        [*celery, "--concurrency", "2", "--queues", "verify", "--hostname", f"verify-{os.getpid()}@bench"],
        [*celery, "--concurrency", "4", "--queues", "hosted", "--hostname", f"hosted-{os.getpid()}@bench"],
        [sys.executable, "manage.py", "serve_images_api", "--port", "8765"],
    ]
    for command in commands:
        stack.procs.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )


def wait_done(job_ids: list[int], timeout: float) -> None:
    from lanes.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Job.objects.filter(pk__in=job_ids).exclude(state__in=Job.TERMINAL).exists():
            return
        time.sleep(0.2)


def run(case: str) -> dict:
    with Stack(worker_args=("--concurrency", "3")) as stack:
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from lanes import progressive, rollout
        from lanes.demo import DEMO_CHECKPOINT, DEMO_HOSTED_VERSION, DEMO_VERSION, ensure_demo_checkpoint_v2
        from lanes.models import AuditEvent, Job, Lane, ModelVersion, Rollout

        models = Path(settings.MODELS_ROOT)
        lane = Lane.objects.get(name="fast-draft")
        lane.max_concurrency, lane.defer_depth, lane.hard_cap, lane.verify = 2, 40, 200, case == "flags"
        lane.latency_slo_ms = 600_000
        lane.save()
        text = {}
        if case == "flags":
            extra_processes(stack)
            rollout.activate(lane, ModelVersion.objects.get(name=DEMO_HOSTED_VERSION), None)
            version = ModelVersion.objects.get(name=DEMO_VERSION)
            text = {"expected_text": "SALE"}
        elif case == "good":
            ensure_demo_checkpoint_v2()
            version = register("bench-good", "demo-tiny-sd-v2")
        elif case == "slow":
            build_slow_checkpoint(models / "bench-slow", models / DEMO_CHECKPOINT)
            version = register("bench-slow", "bench-slow")
        else:
            shutil.rmtree(models / "bench-corrupt", ignore_errors=True)
            shutil.copytree(models / DEMO_CHECKPOINT, models / "bench-corrupt")
            version = register("bench-corrupt", "bench-corrupt")
        plan = progressive.plan_from_yaml(PLAN + (TEXT_ONLY if case == "flags" else ""))
        lane = Lane.objects.get(pk=lane.pk)
        progressive.save_plan(lane, plan, None)
        stack.start()
        session = stack.session()
        prompt = 'a poster that reads "SALE"' if text else "a teal sneaker ad"

        # Capacity: the lane kept full with its serving version (warm), jobs per second.
        warm = [session.submit(prompt=prompt, intent="draft", seed=str(i), **text)[1] for i in range(2)]
        wait_done(warm, 180)
        started = time.monotonic()
        full = [session.submit(prompt=prompt, intent="draft", seed=str(i), **text)[1] for i in range(8)]
        wait_done(full, 180)
        capacity = len(full) / (time.monotonic() - started)
        rate = capacity / 2
        Job.objects.all().delete()

        admin = get_user_model().objects.create_user("bench-admin", password="bench-password-1")
        progressive.start(Lane.objects.get(pk=lane.pk), version, admin)
        if case == "corrupt":
            weights = next((models / "bench-corrupt" / "unet").glob("*.safetensors"))
            weights.write_bytes(weights.read_bytes()[:1000])  # truncated mid-tensor, after validation
        ids: list[int] = []
        began = time.monotonic()
        next_check = began
        ended_at = None
        n = 0
        while time.monotonic() - began < CASE_TIMEOUT_S:
            now = time.monotonic()
            if now >= began + n / rate:
                status, job_id = session.submit(prompt=prompt, intent="draft", seed=str(n), **text)
                if job_id:
                    ids.append(job_id)
                n += 1
            if now >= next_check:
                progressive.check_rollouts()
                next_check = now + 1.0
            if ended_at is None and not Rollout.objects.running().exists():
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at > 3:  # a little traffic after the verdict
                break
            time.sleep(0.02)
        wait_done(ids, 180)

        done = Rollout.objects.select_related("version").get(lane=lane)
        verdict = done.ended_at
        jobs = list(Job.objects.filter(pk__in=ids))
        after = [
            j
            for j in jobs
            if verdict is not None
            and done.state != Rollout.State.PROMOTED
            and (
                (j.state == Job.State.FAILED and j.finished_at and j.finished_at >= verdict)
                or (j.model_version_id == version.pk and j.started_at and j.started_at >= verdict)
            )
        ]
        repins = AuditEvent.objects.filter(action="lane.repin", lane=lane)
        by_hand = ["rollout.paused", "rollout.resumed", "rollout.advanced", "rollout.aborted"]
        people = AuditEvent.objects.filter(lane=lane, action__in=by_hand)
        result = {
            "outcome": done.state,
            "reason": done.reason[:160],
            "user_failures": sum(1 for j in jobs if j.state == Job.State.FAILED),
            "after_verdict": len(after),
            "verdict_s": round((verdict - done.started_at).total_seconds(), 2) if verdict else None,
            "repinned": sum(e.after.get("jobs", 0) for e in repins),
            "retried": sum(1 for j in jobs if j.version_note.startswith("Retried on")),
            "briefs": len(jobs),
            "on_version": sum(1 for j in jobs if j.model_version_id == version.pk),
            "rate_per_s": round(rate, 2),
        }
        if case == "good":
            result["promoted"] = done.state == Rollout.State.PROMOTED
            result["untouched"] = not people.exclude(actor=None).exists()
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=CASES, action="append", help="Only these cases (default: all).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child)))
        return
    cases = {}
    for case in args.case or CASES:
        cases[case] = json.loads(run_child(__file__, ["--child", case], {"ADMISSION_CONTROL": "false"}, case))
        print(f"{case}: {cases[case]}", file=sys.stderr)
    print(json.dumps({"bench": "rollout", "cases": cases}, separators=(",", ":")))


if __name__ == "__main__":
    main()
