"""Refine-stage throughput, batched vs unbatched, at the same max wait.

Drafts are rendered first with the tiny demo checkpoint. Then N refine requests (img2img
over the x2-upscaled drafts) arrive at once from N worker threads and go through the
worker's real Batcher and Engine.refine, once with batches of up to --batch and once with
batches of 1, both with the same max wait. Each configuration is timed --repeats times;
the figure is images/s of the median run. Ends with one line of JSON.

    .venv/bin/python bench/cascade.py [--jobs 32] [--batch 8] [--max-wait-ms 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="final size; drafts are half of it")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import os

    os.environ.setdefault("LANEWAY_VAR_DIR", tempfile.mkdtemp(prefix="laneway-bench-cascade-"))
    harness.setup_django()
    from PIL import Image

    from lanes.batching import Batcher
    from lanes.demo import DEMO_CHECKPOINT, ensure_demo_checkpoint
    from lanes.engines import EngineCache
    from lanes.models import ModelVersion, hash_checkpoint

    path = ensure_demo_checkpoint()
    version = ModelVersion(pk=1, name="bench", location=DEMO_CHECKPOINT, content_hash=hash_checkpoint(Path(path)))
    cache = EngineCache(budget_bytes=None)
    draft = args.size // 2
    with cache.use(version, width=draft, height=draft) as engine:
        drafts = [
            engine.run(prompt=f"poster {i}", seed=i, width=draft, height=draft, steps=4, guidance=7.5).image
            for i in range(args.jobs)
        ]
    upscaled = [d.resize((args.size, args.size), Image.Resampling.BICUBIC) for d in drafts]

    def refine(items: list[int]) -> list:
        with cache.use(version, width=args.size, height=args.size, batch=len(items)) as engine:
            result = engine.refine(
                prompts=[f"poster {i}" for i in items],
                images=[upscaled[i] for i in items],
                seeds=list(items),
                steps=8,
                strength=0.5,
                guidance=7.5,
            )
        return result.images

    def run(max_batch: int) -> tuple[float, list[int]]:
        batcher, sizes, barrier = Batcher(), [], threading.Barrier(args.jobs)

        def one(i: int) -> None:
            barrier.wait()
            _, size = batcher.submit("lane", i, max_batch=max_batch, max_wait_s=args.max_wait_ms / 1000, run=refine)
            sizes.append(size)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.jobs)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return args.jobs / (time.perf_counter() - started), sizes

    run(args.batch)  # warm-up
    results = {}
    for label, max_batch in (("unbatched", 1), ("batched", args.batch)):
        rates = []
        for _ in range(args.repeats):
            rate, sizes = run(max_batch)
            rates.append(rate)
        results[label] = {"images_per_s": statistics.median(rates), "runs": rates, "largest_batch": max(sizes)}
        print(
            f"{label:9s}: {statistics.median(rates):.2f} images/s (runs {', '.join(f'{r:.2f}' for r in rates)}), "
            f"largest batch {max(sizes)}",
            file=sys.stderr,
        )
    speedup = results["batched"]["images_per_s"] / results["unbatched"]["images_per_s"]
    print(
        json.dumps(
            {
                "bench": "cascade",
                "speedup": round(speedup, 2),
                "batched_images_per_s": round(results["batched"]["images_per_s"], 2),
                "unbatched_images_per_s": round(results["unbatched"]["images_per_s"], 2),
                "jobs": args.jobs,
                "batch": args.batch,
                "max_wait_ms": args.max_wait_ms,
                "size": args.size,
            }
        )
    )


if __name__ == "__main__":
    main()
