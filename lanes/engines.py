"""Loading diffusers pipelines of every family and running them within a GPU memory budget.

diffusers and torch take seconds to import, so they are imported lazily, inside the
functions that load and run pipelines: importing this module is cheap (the web process
does, for version registration), and only a worker pays for torch.

The budget covers loaded weights (LRU eviction of idle engines; a module shared by
several pipelines counts once) and the activation memory of the jobs running now
(estimated from size x batch x bytes per pixel, a per-family prior replaced by measured
peaks on CUDA). A job that does not fit waits for memory instead of running into an
out-of-memory error.

LoRA adapters are loaded into an engine once and switched per job (`set_adapters`,
`disable_lora`) without reloading the base. Jobs share an engine's modules, so jobs with
different adapter sets take turns: an engine runs one adapter set at a time.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from . import families
from .models import CheckpointError, ModelVersion, tensor_shapes

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

MiB = 1024 * 1024


class LoadError(CheckpointError):
    """The version's own files would not load (corrupt or changed weights): the version's fault, not the job's."""


class MemoryBudgetError(Exception):
    """A job that can never fit the worker's GPU memory budget."""


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    gpu_index: int | None  # the physical index (first of CUDA_VISIBLE_DEVICES), None on CPU
    name: str = "CPU"

    @property
    def torch_device(self) -> str:
        return "cuda" if self.kind == "cuda" else "cpu"


_device: Device | None = None
_device_lock = threading.Lock()


def current_device() -> Device:
    """CUDA when available (unless LANEWAY_DEVICE says otherwise), else CPU."""
    global _device
    with _device_lock:
        if _device is None:
            import torch

            wanted = settings.LANEWAY_DEVICE
            if wanted == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("LANEWAY_DEVICE=cuda but torch sees no CUDA device.")
            if wanted != "cpu" and torch.cuda.is_available():
                visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
                index = int(visible) if visible.isdigit() else torch.cuda.current_device()
                _device = Device("cuda", index, torch.cuda.get_device_name(0))
            else:
                _device = Device("cpu", None)
        return _device


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


@dataclass
class RunResult:
    images: list[Image]
    run_seconds: float
    gpu_seconds: float
    peak_memory_bytes: int
    api_cost: float = 0.0  # what a hosted engine charged

    @property
    def image(self) -> Image:
        return self.images[0]


class RssPeak:
    """How far the process's resident memory rose above its level at the start of the block (a CPU run's
    activations: torch's allocations are invisible to tracemalloc). Other jobs running at the same time in
    the process count too.

    On Linux the kernel keeps the process's RSS high-water mark (VmHWM), which `clear_refs` resets to the
    current RSS. Each block that opens first folds the mark into the peak of every block still open, then
    resets it; a block that closes folds it into its own. So each block's peak covers exactly its own
    lifetime, however brief a peak was, at no cost while the block runs. Where the mark cannot be read
    or reset, a thread samples the RSS every few milliseconds instead: that thread took about a tenth
    of a CPU render's time, two renders sharing one core."""

    INTERVAL_S = 0.005
    STATUS = Path("/proc/self/status")
    CLEAR_REFS = Path("/proc/self/clear_refs")
    _lock = threading.Lock()
    _open: set[RssPeak] = set()
    _kernel_mark: bool | None = None  # whether the high-water mark can be read and reset: found out once

    def __init__(self, process) -> None:
        self.process = process
        self.rise = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.rise = max(self.rise, self.process.memory_info().rss - self.start)

    @classmethod
    def _mark(cls) -> int:
        for line in cls.STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise OSError("no VmHWM in /proc/self/status")

    @classmethod
    def _fold_and_reset(cls) -> None:
        """Fold the mark into every open block's peak, then reset it to the current RSS. Under the lock."""
        mark = cls._mark()
        for block in cls._open:
            block.peak = max(block.peak, mark)
        cls.CLEAR_REFS.write_text("5")

    def __enter__(self) -> RssPeak:
        cls = type(self)
        self.start = self.process.memory_info().rss
        with cls._lock:
            if cls._kernel_mark is not False:
                try:
                    cls._fold_and_reset()
                    cls._kernel_mark = True
                except (OSError, ValueError):
                    cls._kernel_mark = False
            if cls._kernel_mark:
                self.peak = self.start
                cls._open.add(self)
                return self

        def loop() -> None:
            while not self._stop.wait(self.INTERVAL_S):
                self._sample()

        self._thread = threading.Thread(target=loop, name="laneway-rss-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            cls = type(self)
            with cls._lock:
                cls._open.discard(self)
                try:
                    self.peak = max(self.peak, cls._mark())
                except (OSError, ValueError):  # never in place of the call's own outcome
                    pass
            self.rise = max(0, self.peak - self.start)
            return
        self._stop.set()
        self._thread.join()
        self._sample()


def tensor_storages(pipe) -> dict[int, int]:
    """Bytes of each parameter/buffer storage of the pipeline, keyed by its address (shared ones once)."""
    import torch

    storages: dict[int, int] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return storages


@dataclass(frozen=True)
class LoraRef:
    """A LoRA adapter a job renders with: its file and the weight it is applied at."""

    name: str  # unique per adapter file version (id and hash): the adapter's name inside the pipeline
    path: Path
    weight: float


def denoiser(pipe):
    """The pipeline's denoising network: a UNet (SD 1.x, SDXL) or a transformer (SD3, Flux)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


class Engine:
    """A loaded pipeline. Weights are shared by concurrent calls; each call gets its own scheduler."""

    def __init__(self, key: tuple, pipe, device: Device, family: str = "sd15", distilled: bool = False) -> None:
        self.key = key
        self.pipe = pipe
        self.device = device
        self.family = family
        self.distilled = distilled
        self.in_use = 0
        self.last_used = time.monotonic()
        self._text_lock = threading.Lock()
        self.storages = tensor_storages(pipe)
        self.weights_bytes = sum(self.storages.values())
        self.dtype_bytes = denoiser(pipe).dtype.itemsize
        self.bytes_per_pixel = float(families.get(family).prior_bytes_per_pixel * self.dtype_bytes)
        # LoRA: adapters loaded into the pipeline, the set applied now, and the jobs running with it.
        self._lora_cond = threading.Condition()
        self._lora_loaded: set[str] = set()
        self._lora_active: tuple[tuple[str, float], ...] | None = ()  # None: unknown, apply again
        self._lora_users = 0
        self._lora_switchers = 0  # calls waiting to switch to another set

    @contextmanager
    def adapters(self, refs: list[LoraRef] | tuple = (), wait_timeout: float = 600.0) -> Iterator[None]:
        """Apply exactly these adapters (none: the base model) for one call; waits while another set runs.

        Calls with the set in use share the pipeline; a call wanting another set waits until they end,
        and while it waits no new call joins the set in use (so it cannot be starved).
        """
        wanted = tuple(sorted((ref.name, float(ref.weight)) for ref in refs))
        deadline = time.monotonic() + wait_timeout
        with self._lora_cond:
            switching = False
            while True:
                same = self._lora_active == wanted
                # Join the set in use unless someone waits to switch (then they go first); switch when idle.
                if (same and (switching or not self._lora_switchers)) or (not same and self._lora_users == 0):
                    break
                if not same and not switching:
                    switching = True
                    self._lora_switchers += 1
                if not self._lora_cond.wait(max(0.0, deadline - time.monotonic())):
                    self._lora_switchers -= int(switching)
                    self._lora_cond.notify_all()
                    raise MemoryBudgetError(f"Waited {wait_timeout:.0f} s for other LoRA jobs on {self.key[0]}.")
            self._lora_switchers -= int(switching)
            if self._lora_active != wanted:
                self._apply_adapters(refs, wanted)
            self._lora_users += 1
        try:
            yield
        finally:
            with self._lora_cond:
                self._lora_users -= 1
                self._lora_cond.notify_all()

    def _apply_adapters(self, refs, wanted) -> None:
        # Until it is known again, the next call re-applies its set (a failure below may leave any state).
        self._lora_active = None
        try:
            for ref in refs:
                if ref.name not in self._lora_loaded:
                    try:
                        self.pipe.load_lora_weights(str(ref.path), adapter_name=ref.name)
                    except Exception as exc:  # peft/diffusers raise ValueError, KeyError, RuntimeError (shapes)
                        self._forget_adapter(ref.name)
                        if is_oom(exc):
                            raise
                        raise CheckpointError(
                            f"LoRA adapter {ref.path.name} does not fit this model: {type(exc).__name__}: {exc}"
                        ) from exc
                    self._lora_loaded.add(ref.name)
                    self.storages = tensor_storages(self.pipe)
                    self.weights_bytes = sum(self.storages.values())
            if wanted:
                self.pipe.enable_lora()
                self.pipe.set_adapters([name for name, _ in wanted], adapter_weights=[w for _, w in wanted])
            elif self._lora_loaded:
                self.pipe.disable_lora()
        except BaseException:
            if self._lora_loaded:  # never leave a half-applied set switched on in the shared pipeline
                self.pipe.disable_lora()
            raise
        self._lora_active = wanted

    def _forget_adapter(self, name: str) -> None:
        """Remove what a failed load left behind, so the next job sees the base model."""
        try:
            self.pipe.delete_adapters([name])
        except Exception:  # nothing was injected under that name
            log.debug("no partial adapter %s to delete", name)

    def activation_bytes(self, width: int, height: int, batch: int = 1) -> int:
        return int(batch * width * height * self.bytes_per_pixel)

    def _fresh(self, task: str = "text2img"):
        """A pipeline over the loaded modules for one call: text2img, img2img (diffusers' own mapping) or the
        loaded class ("as-is")."""
        # Schedulers keep per-call state (timesteps, step index): never share one between calls.
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        if task == "img2img" and not families.get(self.family).upscale:
            # Imported here: the auto-pipeline module imports every pipeline class (seconds, once).
            from diffusers import AutoPipelineForImage2Image

            pipe = AutoPipelineForImage2Image.from_pipe(self.pipe, scheduler=scheduler)
        else:
            cls = type(self.pipe)
            components = {**self.pipe.components, "scheduler": scheduler}
            if "requires_safety_checker" in inspect.signature(cls.__init__).parameters:
                components["requires_safety_checker"] = False
            pipe = cls(**components)
        pipe.set_progress_bar_config(disable=True)
        # A fast (Rust) tokenizer keeps its padding/truncation settings as shared mutable state:
        # two threads encoding prompts at once corrupt each other's batches. Encode one at a time.
        encode = pipe.encode_prompt

        def encode_prompt(*args, **kwargs):
            with self._text_lock:
                return encode(*args, **kwargs)

        pipe.encode_prompt = encode_prompt
        return pipe

    @staticmethod
    def invoke(pipe, **kwargs):
        """The one place a pipeline is called (and the seam where tests inject faults)."""
        return pipe(**kwargs)

    def _timed(
        self, pipe, pixels: int, on_step: Callable[[int], None] | None, legacy_callback: bool = False, **kwargs
    ) -> RunResult:
        import psutil
        import torch

        cuda = self.device.kind == "cuda"
        rss = None if cuda else RssPeak(psutil.Process())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()

        def step_end(_pipe, step: int, _timestep, callback_kwargs):
            if on_step is not None:
                on_step(step + 1)
            return callback_kwargs

        if legacy_callback:  # pipelines that still take callback(step, timestep, latents)
            kwargs.update(callback=lambda step, timestep, latents: step_end(pipe, step, timestep, {}), callback_steps=1)
        else:
            kwargs["callback_on_step_end"] = step_end
        started = time.perf_counter()
        with torch.inference_mode(), rss or nullcontext():
            images = self.invoke(pipe, **kwargs).images
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            # Learn the activation cost from what this call really took.
            measured = (peak - baseline) / max(pixels, 1)
            self.bytes_per_pixel = max(measured * 1.2, self.bytes_per_pixel * 0.5, 1.0)
        else:
            # The process's RSS is mostly loaded weights and libraries, the same for every job: what
            # the call itself took is how far the RSS rose above where it started.
            peak = rss.rise if rss is not None else 0
        # Device-seconds on any device: a CPU worker's time is billed as CPU-seconds.
        return RunResult(images=images, run_seconds=elapsed, gpu_seconds=elapsed, peak_memory_bytes=peak)

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
        adapters: list[LoraRef] | tuple = (),
    ) -> RunResult:
        import torch

        # A CPU generator gives the same initial noise for a seed on every device.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with self.adapters(adapters):
            return self._timed(
                self._fresh(),
                width * height,
                on_step,
                prompt=prompt,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                **families.call_kwargs(self.family, self.distilled),
            )

    def refine(
        self,
        *,
        prompts: list[str],
        images: list[Image],
        seeds: list[int],
        steps: int,
        strength: float,
        guidance: float,
        on_step: Callable[[int], None] | None = None,
        adapters: list[LoraRef] | tuple = (),
    ) -> RunResult:
        """One batched img2img call over several jobs' upscaled drafts (all the same size)."""
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        width, height = images[0].size
        with self.adapters(adapters):
            return self._timed(
                self._fresh("img2img"),
                width * height * len(images),
                on_step,
                prompt=prompts,
                image=images,
                strength=strength,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
            )

    def upscale(
        self,
        *,
        prompts: list[str],
        images: list[Image],
        seeds: list[int],
        steps: int,
        strength: float = 0.0,
        guidance: float = 0.0,
        on_step: Callable[[int], None] | None = None,
    ) -> RunResult:
        """One batched latent x2 upscale over several jobs' drafts (all the same size)."""
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        width, height = images[0].size
        return self._timed(
            self._fresh("as-is"),
            4 * width * height * len(images),
            on_step,
            legacy_callback=True,
            prompt=prompts,
            image=images,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
        )


def load_pipeline(version: ModelVersion, device: Device):
    """Load a checkpoint the one way every checkpoint is loaded: the family's diffusers class, with
    from_pretrained for a folder or from_single_file (and a local config folder) for a single file."""
    path = version.checkpoint_path()
    import diffusers
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    spec = version.spec
    if not spec.local:
        raise CheckpointError(f"{version.name} is a hosted engine, not a checkpoint.")
    cls = getattr(diffusers, spec.pipeline)
    dtype = getattr(torch, version.dtype)
    if device.kind == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # half precision is not worth it (or not supported) on CPU
    extra = {"safety_checker": None, "requires_safety_checker": False} if spec.value == "sd15" else {}
    try:
        if path.is_dir():
            pipe = cls.from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
        else:
            config = version.config_path()
            if config is None:
                raise CheckpointError(
                    f"Single-file checkpoint {version.location!r} needs a config folder (config_location) "
                    "because configs cannot be downloaded."
                )
            # from_single_file has no `dtype` yet (diffusers 0.42), only the older name.
            pipe = cls.from_single_file(path, config=str(config), torch_dtype=dtype, local_files_only=True, **extra)
    except CheckpointError:
        raise
    except Exception as exc:  # diffusers raises OSError, ValueError, JSON and safetensors errors
        if is_oom(exc):
            raise
        raise LoadError(
            f"Checkpoint {version.location!r} could not be loaded as {spec.label}: {type(exc).__name__}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    # Loaded on the CPU: moving is only for CUDA (and .to() on the CPU warns about fp32 VAE modules).
    return pipe.to(device.torch_device) if device.kind != "cpu" else pipe


def check_files(version: ModelVersion) -> None:
    """Refuse to load a version whose files are not the ones hashed at registration (LoadError: the
    version's fault, so the job's worker takes it out of service). Sizes and times first; a re-hash
    only when they differ."""
    try:
        changed = version.files_changed()
    except CheckpointError as exc:
        raise LoadError(str(exc)) from exc
    if changed:
        raise LoadError(f"Refused to load {version.name}: {changed}.")


def _weight_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = [f for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin")]
    # Variant files ("….fp16.safetensors") sit beside the full ones; diffusers loads the full ones.
    names = {f.with_suffix("").name for f in files}
    return [f for f in files if not ("." in f.stem and f.stem.rsplit(".", 1)[0] in names)]


def estimate_weights_bytes(version: ModelVersion, device_kind: str = "cuda") -> int:
    """Bytes the version's weights take once loaded: parameter counts from the files' headers at its dtype."""
    itemsize = 4 if device_kind == "cpu" or version.dtype == "float32" else 2
    total = 0
    root = version.checkpoint_path()
    for file in _weight_files(root):
        if file.suffix == ".safetensors":
            try:
                total += sum(math.prod(shape) for shape in tensor_shapes(file).values()) * itemsize
            except CheckpointError as exc:
                raise LoadError(f"Checkpoint {version.location!r} could not be loaded: {exc}") from exc
        else:  # a pickled .bin: its size, assuming fp32 on disk
            total += file.stat().st_size * itemsize // 4
    return total


def default_budget_bytes() -> int | None:
    if settings.GPU_MEMORY_BUDGET_MB:
        return settings.GPU_MEMORY_BUDGET_MB * MiB
    if current_device().kind == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    return None


class EngineCache:
    """The engines of this worker process, kept (with running jobs' activations) under a budget."""

    def __init__(self, budget_bytes: int | None | bool = False, wait_timeout: float = 600.0) -> None:
        self._engines: dict[tuple, Engine] = {}
        # Dropped by a reload while jobs still ran on them: counted until their last job ends.
        self._retiring: list[Engine] = []
        self._cond = threading.Condition()
        self._reserved = 0
        self._budget = budget_bytes
        self.wait_timeout = wait_timeout
        self.evictions = 0

    @property
    def budget(self) -> int | None:
        if self._budget is False:  # resolved lazily: the device is known only in the worker
            self._budget = default_budget_bytes()
            apply_process_memory_cap(self._budget)
        return self._budget

    def weights_bytes(self) -> int:
        """Loaded weights; a module shared by several pipelines counts once."""
        storages: dict[int, int] = {}
        for engine in [*self._engines.values(), *self._retiring]:
            storages.update(engine.storages)
        return sum(storages.values())

    def used_bytes(self) -> int:
        return self.weights_bytes() + self._reserved

    def _evict_idle(self, needed: int) -> None:
        """Drop least recently used idle engines until `needed` more bytes fit (or none is idle)."""
        budget = self.budget
        while budget is not None and self.used_bytes() + needed > budget:
            idle = [e for e in self._engines.values() if e.in_use == 0]
            if not idle:
                return
            victim = min(idle, key=lambda e: e.last_used)
            del self._engines[victim.key]
            self.evictions += 1
            log.info("evicted %s to stay under the memory budget", victim.key)
            empty_device_cache()

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.wait_timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MemoryBudgetError(f"Waited {self.wait_timeout:.0f} s for GPU memory to {what}.")
            self._cond.wait(remaining)

    @contextmanager
    def use(
        self,
        version: ModelVersion,
        *,
        width: int,
        height: int,
        batch: int = 1,
        on_loading: Callable[[], None] | None = None,
        on_loaded: Callable[[float], None] | None = None,
    ) -> Iterator[Engine]:
        """An engine for the version, with activation memory for one call reserved; waits for room.

        When the call has to load the pipeline (a cold start), on_loading is called before and
        on_loaded with the seconds it took after, so that the load is not counted as run time.
        """
        device = current_device()
        key = (version.pk, version.content_hash, device.kind, version.dtype)
        with self._cond:
            engine = self._engines.get(key)
            if engine is None:
                estimate = estimate_weights_bytes(version, device.kind)
                budget = self.budget
                if budget is not None and estimate > budget:
                    raise MemoryBudgetError(
                        f"{version.name} needs about {estimate / MiB:.0f} MiB of weights; the budget is "
                        f"{budget / MiB:.0f} MiB."
                    )

                def room_for_weights() -> bool:
                    self._evict_idle(estimate)
                    return budget is None or self.used_bytes() + estimate <= budget

                self._wait(room_for_weights, f"load {version.name}")
                engine = self._engines.get(key)
                if engine is None:
                    if on_loading is not None:
                        on_loading()
                    started = time.perf_counter()
                    pipe = load_pipeline(version, device)
                    engine = Engine(key, pipe, device, version.family, version.distilled)
                    self._engines[key] = engine
                    load_seconds = time.perf_counter() - started
                    log.info("loaded %s on %s in %.2fs", version.name, device.kind, load_seconds)
                    if on_loaded is not None:
                        on_loaded(load_seconds)
            engine.in_use += 1
            try:
                activations = engine.activation_bytes(width, height, batch)
                budget = self.budget
                if budget is not None:
                    own = engine.weights_bytes
                    if own + activations > budget:
                        raise MemoryBudgetError(
                            f"A {width}x{height} batch of {batch} needs about {(own + activations) / MiB:.0f} MiB "
                            f"with {version.name}; the budget is {budget / MiB:.0f} MiB."
                        )

                    def room_for_activations() -> bool:
                        self._evict_idle(activations)
                        return self.used_bytes() + activations <= budget

                    self._wait(room_for_activations, f"run a {width}x{height} batch of {batch}")
                self._reserved += activations
            except BaseException:
                engine.in_use -= 1
                self._cond.notify_all()
                raise
        try:
            yield engine
        finally:
            with self._cond:
                self._reserved -= activations
                engine.in_use -= 1
                engine.last_used = time.monotonic()
                if engine.in_use == 0 and engine in self._retiring:
                    self._retiring.remove(engine)
                    empty_device_cache()
                self._cond.notify_all()

    def fits(self, version: ModelVersion, *, width: int, height: int, batch: int = 1) -> bool:
        """Whether a call would find room now: the engines in use (or retiring) and every reserved activation,
        paused jobs' included, stay; idle engines would be evicted. A version not loaded yet counts its
        weights' estimate and its family's activation prior."""
        budget = self.budget
        if budget is None or version.is_hosted:
            return True
        device = current_device()
        key = (version.pk, version.content_hash, device.kind, version.dtype)
        with self._cond:
            engine = self._engines.get(key)
            kept: dict[int, int] = {}
            for other in [*self._engines.values(), *self._retiring]:
                if other.in_use or other is engine:
                    kept.update(other.storages)
            used = sum(kept.values()) + self._reserved
        if engine is not None:
            return used + engine.activation_bytes(width, height, batch) <= budget
        itemsize = 4 if device.kind == "cpu" or version.dtype == "float32" else 2
        activations = batch * width * height * families.get(version.family).prior_bytes_per_pixel * itemsize
        return used + estimate_weights_bytes(version, device.kind) + activations <= budget

    def warm(self, version: ModelVersion) -> float:
        """Load the version's pipeline now (before any job asks for it); the seconds it took, 0 if loaded."""
        took = 0.0

        def loaded(seconds: float) -> None:
            nonlocal took
            took = seconds

        with self.use(version, width=0, height=0, on_loaded=loaded):
            pass
        return took

    def loaded(self) -> list[tuple]:
        with self._cond:
            return list(self._engines)

    def reload(self) -> tuple[int, int]:
        """Forget every loaded pipeline: idle ones now, busy ones when their jobs finish.

        The next job loads its checkpoint again from disk. Returns (dropped, retiring).
        """
        with self._cond:
            engines = list(self._engines.values())
            self._engines.clear()
            busy = [e for e in engines if e.in_use]
            self._retiring.extend(busy)
            if len(busy) < len(engines):
                empty_device_cache()
            self._cond.notify_all()
            return len(engines) - len(busy), len(busy)

    def retiring(self) -> int:
        with self._cond:
            return len(self._retiring)

    def clear(self) -> None:
        with self._cond:
            self._engines.clear()
            empty_device_cache()


def empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def apply_process_memory_cap(budget: int | None) -> None:
    """On CUDA, make the budget a hard cap: the allocator raises OOM past it instead of taking the card."""
    if budget is None or current_device().kind != "cuda":
        return
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))


engine_cache = EngineCache()
