"""Loading diffusers pipelines and running them, one cache per worker process.

diffusers and torch take seconds to import, so they are imported here lazily and this
module is only imported by worker code paths, never at Django start-up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from .models import CheckpointError, ModelVersion

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    gpu_index: int | None  # the physical index (first of CUDA_VISIBLE_DEVICES), None on CPU

    @property
    def torch_device(self) -> str:
        return "cuda" if self.kind == "cuda" else "cpu"


_device: Device | None = None


def current_device() -> Device:
    """CUDA when available (unless LANEWAY_DEVICE says otherwise), else CPU."""
    global _device
    if _device is None:
        import torch

        wanted = settings.LANEWAY_DEVICE
        if wanted == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("LANEWAY_DEVICE=cuda but torch sees no CUDA device.")
        if wanted != "cpu" and torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
            index = int(visible) if visible.isdigit() else torch.cuda.current_device()
            _device = Device("cuda", index)
        else:
            _device = Device("cpu", None)
    return _device


@dataclass
class RunResult:
    image: Image
    run_seconds: float
    gpu_seconds: float
    peak_memory_bytes: int


class Engine:
    """A loaded pipeline. Weights are shared by concurrent calls; each call gets its own scheduler."""

    def __init__(self, pipe, device: Device) -> None:
        self.pipe = pipe
        self.device = device

    def _call_pipeline(self):
        # Schedulers keep per-call state (timesteps, step index): never share one between calls.
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        components = {**self.pipe.components, "scheduler": scheduler}
        pipe = self.pipe.__class__(**components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(
        self,
        *,
        prompt: str,
        seed: int,
        width: int,
        height: int,
        steps: int,
        guidance: float,
        on_step: Callable[[int], None] | None = None,
    ) -> RunResult:
        import psutil
        import torch

        pipe = self._call_pipeline()
        cuda = self.device.kind == "cuda"
        process = psutil.Process()
        peak_rss = process.memory_info().rss
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def step_end(_pipe, step: int, _timestep, kwargs):
            nonlocal peak_rss
            if not cuda:
                peak_rss = max(peak_rss, process.memory_info().rss)
            if on_step is not None:
                on_step(step + 1)
            return kwargs

        # A CPU generator gives the same initial noise for a seed on every device.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode():
            image = pipe(
                prompt,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                callback_on_step_end=step_end,
            ).images[0]
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = max(peak_rss, process.memory_info().rss)
        return RunResult(image=image, run_seconds=elapsed, gpu_seconds=elapsed if cuda else 0.0, peak_memory_bytes=peak)


def load_pipeline(version: ModelVersion, device: Device):
    """Load a checkpoint the one way every checkpoint is loaded: from_pretrained or from_single_file."""
    path = version.checkpoint_path()
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    dtype = getattr(torch, version.dtype)
    if device.kind == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # half precision is not worth it (or not supported) on CPU
    try:
        if path.is_dir():
            pipe = StableDiffusionPipeline.from_pretrained(
                path, torch_dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
            )
        else:
            config = version.config_path()
            if config is None:
                raise CheckpointError(
                    f"Single-file checkpoint {version.location!r} needs a config folder (config_location) "
                    "because configs cannot be downloaded."
                )
            pipe = StableDiffusionPipeline.from_single_file(
                path, config=str(config), torch_dtype=dtype, local_files_only=True, safety_checker=None
            )
    except CheckpointError:
        raise
    except Exception as exc:  # diffusers raises OSError, ValueError, JSON and safetensors errors
        raise CheckpointError(
            f"Checkpoint {version.location!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device.torch_device)


class EngineCache:
    """Loaded engines of this process, keyed by model version and checkpoint hash."""

    def __init__(self) -> None:
        self._engines: dict[tuple, Engine] = {}
        self._lock = threading.Lock()

    def get(self, version: ModelVersion) -> Engine:
        device = current_device()
        key = (version.pk, version.content_hash, device.kind, version.dtype)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                started = time.perf_counter()
                engine = Engine(load_pipeline(version, device), device)
                self._engines[key] = engine
                log.info("loaded %s on %s in %.2fs", version.name, device.kind, time.perf_counter() - started)
            return engine

    def clear(self) -> None:
        with self._lock:
            self._engines.clear()


engines = EngineCache()
