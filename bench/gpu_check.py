"""GPU paths, measured on a machine with an NVIDIA GPU (prints figures, ends with one JSON line).

- NVML through nvidia-ml-py: device, memory, utilisation, and what one query costs.
- The engine on CUDA: the demo checkpoint loaded with from_pretrained, per-call latency and
  peak memory, and the activation estimate learned from measured peaks.
- The memory budget: the process capped with set_per_process_memory_fraction; a job the
  estimate says cannot fit is refused before it runs; a real allocator OOM (forced by
  corrupting the estimate) is caught, the cache emptied, and the engine runs again.
- Refine batching on the GPU: images/s with batches of 8 vs 1.

    LANEWAY_DEVICE=cuda .venv/bin/python bench/gpu_check.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness

MiB = 1024 * 1024


def nvml_figures() -> dict:
    import pynvml

    started = time.perf_counter()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "error": str(exc), "init_ms": (time.perf_counter() - started) * 1000}
    init_ms = (time.perf_counter() - started) * 1000
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    calls = []
    for _ in range(200):
        t = time.perf_counter()
        pynvml.nvmlDeviceGetUtilizationRates(handle)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
        calls.append((time.perf_counter() - t) * 1e6)
    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    figures = {
        "available": True,
        "devices": pynvml.nvmlDeviceGetCount(),
        "name": name if isinstance(name, str) else name.decode(),
        "memory_total_mib": memory.total // MiB,
        "memory_used_mib": memory.used // MiB,
        "utilization_gpu_pct": util.gpu,
        "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        "init_ms": round(init_ms, 2),
        "util_plus_memory_query_us_p50": round(statistics.median(calls), 1),
    }
    pynvml.nvmlShutdown()
    return figures


def main() -> None:
    os.environ.setdefault("LANEWAY_VAR_DIR", tempfile.mkdtemp(prefix="laneway-gpu-"))
    harness.setup_django()
    import torch
    from PIL import Image

    from lanes.demo import DEMO_CHECKPOINT, ensure_demo_checkpoint
    from lanes.engines import EngineCache, MemoryBudgetError, current_device, is_oom
    from lanes.models import ModelVersion, hash_checkpoint

    out: dict = {"bench": "gpu_check", "nvml": nvml_figures()}
    print(f"NVML: {out['nvml']}", file=sys.stderr)
    device = current_device()
    out["device"] = device.kind
    if device.kind != "cuda":
        print("No CUDA device: only the NVML figures apply.", file=sys.stderr)
        print(json.dumps(out))
        return
    out["torch"] = torch.__version__
    out["gpu"] = torch.cuda.get_device_name(0)
    total = torch.cuda.get_device_properties(0).total_memory

    path = ensure_demo_checkpoint()
    version = ModelVersion(pk=1, name="demo", location=DEMO_CHECKPOINT, content_hash=hash_checkpoint(Path(path)))
    budget = 4 * 1024 * MiB
    cache = EngineCache(budget_bytes=budget)
    from lanes.engines import apply_process_memory_cap

    apply_process_memory_cap(budget)  # what a worker does with GPU_MEMORY_BUDGET_MB=4096
    out["budget_mib"] = budget // MiB
    out["process_cap_fraction"] = round(budget / total, 4)

    with cache.use(version, width=64, height=64) as engine:
        prior = engine.bytes_per_pixel
        runs = []
        for i in range(30):
            r = engine.run(prompt="a poster", seed=i, width=64, height=64, steps=4, guidance=7.5)
            runs.append(r)
        a = engine.run(prompt="same", seed=5, width=64, height=64, steps=4, guidance=7.5).image
        b = engine.run(prompt="same", seed=5, width=64, height=64, steps=4, guidance=7.5).image
    out["run_64px_4steps_ms_p50"] = round(statistics.median(r.run_seconds for r in runs[5:]) * 1000, 2)
    out["run_64px_peak_mib"] = round(max(r.peak_memory_bytes for r in runs) / MiB, 1)
    out["same_seed_identical_on_cuda"] = a.tobytes() == b.tobytes()
    out["weights_mib"] = round(engine.weights_bytes / MiB, 2)
    out["bytes_per_pixel_prior"] = prior
    out["bytes_per_pixel_learned"] = round(engine.bytes_per_pixel, 1)

    with cache.use(version, width=512, height=512) as engine:
        big = engine.run(prompt="a poster", seed=1, width=512, height=512, steps=20, guidance=7.5)
        estimate = engine.activation_bytes(512, 512)
    out["run_512px_20steps_ms"] = round(big.run_seconds * 1000, 1)
    out["run_512px_peak_mib"] = round(big.peak_memory_bytes / MiB, 1)
    out["estimate_512px_mib_after_learning"] = round(estimate / MiB, 1)

    # A job the estimate says cannot fit is refused before it touches the GPU.
    try:
        with cache.use(version, width=8192, height=8192, batch=16):
            out["huge_job"] = "admitted (unexpected)"
    except MemoryBudgetError as exc:
        out["huge_job"] = f"refused: {exc}"

    # A real allocator OOM: make the estimate lie, ask for far more than the 4 GiB cap allows.
    with cache.use(version, width=64, height=64) as engine:
        engine.bytes_per_pixel = 0.001
    oom = {}
    try:
        with cache.use(version, width=2048, height=2048, batch=8) as engine:
            draft = Image.new("RGB", (2048, 2048), "white")
            engine.refine(prompts=["x"] * 8, images=[draft] * 8, seeds=list(range(8)), steps=4, strength=1.0,
                          guidance=7.5)  # fmt: skip
        oom["raised"] = False
    except Exception as exc:
        oom["raised"] = True
        oom["is_oom"] = is_oom(exc)
        oom["message"] = str(exc).splitlines()[0][:160]
    torch.cuda.empty_cache()
    with cache.use(version, width=64, height=64) as engine:
        engine.bytes_per_pixel = prior
        after = engine.run(prompt="after the OOM", seed=1, width=64, height=64, steps=4, guidance=7.5)
    oom["runs_after"] = after.image.size == (64, 64)
    oom["allocated_mib_after"] = round(torch.cuda.memory_allocated() / MiB, 1)
    out["oom"] = oom

    # Refine batching on the GPU.
    with cache.use(version, width=128, height=128) as engine:
        drafts = [
            engine.run(prompt=f"p{i}", seed=i, width=128, height=128, steps=4, guidance=7.5).image.resize((256, 256))
            for i in range(32)
        ]
    rates = {}
    for batch in (1, 8):
        with cache.use(version, width=256, height=256, batch=batch) as engine:
            engine.refine(prompts=["w"] * batch, images=drafts[:batch], seeds=list(range(batch)), steps=8,
                          strength=0.5, guidance=7.5)  # fmt: skip
            started = time.perf_counter()
            for start in range(0, 32, batch):
                engine.refine(
                    prompts=[f"p{i}" for i in range(start, start + batch)],
                    images=drafts[start : start + batch],
                    seeds=list(range(start, start + batch)),
                    steps=8,
                    strength=0.5,
                    guidance=7.5,
                )
            rates[batch] = 32 / (time.perf_counter() - started)
    out["refine_256px_images_per_s"] = {"batch_1": round(rates[1], 1), "batch_8": round(rates[8], 1)}
    out["refine_batch_speedup"] = round(rates[8] / rates[1], 2)
    for key, value in out.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
