"""The fleet's configuration: model versions, the lanes that serve them and the intents routed to lanes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from safetensors import safe_open

from .. import families


class CheckpointError(Exception):
    """A checkpoint that cannot be used: outside MODELS_ROOT, missing or corrupt."""


class Priority(models.TextChoices):
    CRITICAL = "critical"
    STANDARD = "standard"
    BACKGROUND = "background"


class ModelVersion(models.Model):
    # What each family can do and how it loads: lanes/families.py (keyed by these values).
    class Family(models.TextChoices):
        SD15 = "sd15", "Stable Diffusion 1.x / 2.x"
        SDXL = "sdxl", "Stable Diffusion XL"
        SDXL_REFINER = "sdxl-refiner", "SDXL refiner (img2img)"
        SD3 = "sd3", "Stable Diffusion 3"
        FLUX = "flux", "Flux"
        LATENT_UPSCALER_X2 = "latent-upscaler-x2", "Stable Diffusion latent upscaler (x2)"
        HTTP = "http", "Hosted engine (OpenAI Images API)"

    class Status(models.TextChoices):
        STAGED = "staged"
        VALIDATING = "validating"
        VALIDATED = "validated"
        INVALID = "invalid", "failed validation"
        ACTIVE = "active"
        RETIRED = "retired"

    # Versions a lane may be switched to (as its active or canary version).
    DEPLOYABLE = (Status.VALIDATED, Status.ACTIVE)

    class DType(models.TextChoices):
        FLOAT32 = "float32"
        FLOAT16 = "float16"
        BFLOAT16 = "bfloat16"

    name = models.SlugField(max_length=100, unique=True)
    family = models.CharField(max_length=40, choices=Family.choices, default=Family.SD15)
    location = models.CharField(
        max_length=500,
        blank=True,
        help_text="A diffusers folder or a .safetensors file, relative to MODELS_ROOT (none for a hosted engine).",
    )
    config_location = models.CharField(
        max_length=500,
        blank=True,
        help_text="For a single-file checkpoint: a diffusers folder (under MODELS_ROOT) holding its configs.",
    )
    content_hash = models.CharField(max_length=64, blank=True)
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.FLOAT32)
    distilled = models.BooleanField(
        default=False, help_text="Timestep-distilled (turbo, lightning, schnell): few steps, little or no guidance."
    )
    # A hosted engine (family "http"): an image API that renders instead of a local GPU.
    base_url = models.URLField(blank=True, help_text="The API's base URL, e.g. https://api.openai.com/v1.")
    remote_model = models.CharField(max_length=200, blank=True, help_text="The model name the API is asked for.")
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="The environment variable holding the API key (never stored here)."
    )
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    max_concurrency = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(1)], help_text="Requests in flight at once, per worker."
    )
    price_per_image = models.FloatField(default=0.0, validators=[MinValueValidator(0.0)])
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STAGED)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    # Validation: a smoke render with a fixed seed on a worker, before the version may serve.
    validated_at = models.DateTimeField(null=True, blank=True)
    validation_error = models.TextField(blank=True)
    smoke_image = models.CharField(max_length=300, blank=True, help_text="Relative to MEDIA_ROOT.")
    smoke_seconds = models.FloatField(null=True, blank=True)
    validated_on = models.CharField(max_length=200, blank=True, help_text="The worker that ran the smoke render.")
    # Validation hashes the files first (a big checkpoint takes a while): bytes read so far, of all.
    hash_bytes_done = models.PositiveBigIntegerField(default=0, db_default=0)
    hash_bytes_total = models.PositiveBigIntegerField(default=0, db_default=0)
    # Sizes and modification times of the files as they were when their hash was last checked: a worker
    # about to load the version re-hashes only when these differ (lanes/engines.py check_files).
    files_stamp = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_deployable(self) -> bool:
        return self.status in self.DEPLOYABLE

    def in_use(self) -> bool:
        """Serving somewhere: a lane's active, canary or refine version."""
        return Lane.objects.using_version(self).exists()

    def sync_status(self) -> None:
        """ACTIVE while a lane serves it; back to VALIDATED when none does (never touches other states)."""
        serving = self.in_use()
        if serving and self.status == self.Status.VALIDATED:
            target = self.Status.ACTIVE
        elif not serving and self.status == self.Status.ACTIVE:
            target = self.Status.VALIDATED
        else:
            return
        ModelVersion.objects.filter(pk=self.pk, status=self.status).update(status=target)
        self.status = target

    @property
    def spec(self) -> families.Family:
        return families.get(self.family)

    @property
    def is_hosted(self) -> bool:
        return not self.spec.local

    def checkpoint_path(self) -> Path:
        return resolve_checkpoint(self.location)

    def config_path(self) -> Path | None:
        return resolve_checkpoint(self.config_location) if self.config_location else None

    def compute_hash(self, progress: Callable[[int, int], None] | None = None) -> str:
        if self.is_hosted:  # no files: the hash names its endpoint and model, fixed at registration
            return self.content_hash
        return hash_checkpoint(self.checkpoint_path(), progress)

    def files_changed(self) -> str | None:
        """Why the version's files are no longer the ones hashed at registration (None if they are).

        Cheap when nothing changed: sizes and modification times are compared with those recorded at the
        last check, and the files are hashed again only when those differ (a touched but identical file
        passes, and its new stamp is recorded)."""
        if self.is_hosted or not self.content_hash:
            return None
        path = self.checkpoint_path()
        stamp = files_stamp(path)
        if stamp == self.files_stamp:
            return None
        digest = hash_checkpoint(path)
        if digest != self.content_hash:
            return (
                f"the files of {self.name} changed since they were hashed at registration "
                f"(sha256 {digest[:12]}…, registered {self.content_hash[:12]}…)"
            )
        ModelVersion.objects.filter(pk=self.pk, content_hash=digest).update(files_stamp=stamp)
        self.files_stamp = stamp
        return None

    def record_hash_progress(self, done: int, total: int) -> None:
        self.hash_bytes_done, self.hash_bytes_total = done, total
        ModelVersion.objects.filter(pk=self.pk, status=self.Status.VALIDATING).update(
            hash_bytes_done=done, hash_bytes_total=total
        )

    @property
    def awaiting_verdict(self) -> bool:
        """Staged or validating: a worker has yet to say whether it may serve."""
        return self.status in (self.Status.STAGED, self.Status.VALIDATING)

    def same_files(self) -> models.QuerySet[ModelVersion]:
        """Other versions of the same files: none while this one has no hash (empty matches nothing)."""
        if not self.content_hash:
            return ModelVersion.objects.none()
        return ModelVersion.objects.filter(content_hash=self.content_hash).exclude(pk=self.pk)

    @property
    def hashing(self) -> bool:
        """Its validation is reading its files (the hash comes before the smoke render)."""
        return self.status == self.Status.VALIDATING and self.hash_bytes_done < self.hash_bytes_total

    @property
    def hash_percent(self) -> int:
        if not self.hash_bytes_total:
            return 0
        return min(100, self.hash_bytes_done * 100 // self.hash_bytes_total)


class Adapter(models.Model):
    """A LoRA adapter for one model version: a .safetensors file under MODELS_ROOT, hashed like checkpoints."""

    class Status(models.TextChoices):
        STAGED = "staged"
        VALIDATED = "validated"
        INVALID = "invalid", "failed validation"

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="adapters")
    name = models.SlugField(max_length=100)
    location = models.CharField(
        max_length=500, help_text="A LoRA .safetensors file (or its folder), under MODELS_ROOT."
    )
    content_hash = models.CharField(max_length=64)
    default_weight = models.FloatField(default=1.0, validators=[MinValueValidator(-4.0), MaxValueValidator(4.0)])
    description = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STAGED)
    validation_error = models.TextField(blank=True)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["version__name", "name"]
        constraints = [models.UniqueConstraint(fields=["version", "name"], name="one_adapter_name_per_version")]

    def __str__(self) -> str:
        return f"{self.version.name}+{self.name}"

    def file_path(self) -> Path:
        return resolve_adapter(self.location)

    @property
    def lora_name(self) -> str:
        """Its name inside a loaded pipeline: one per adapter file version."""
        return f"a{self.pk}_{self.content_hash[:12]}"


def resolve_checkpoint(location: str) -> Path:
    """The absolute path of a checkpoint, refusing anything outside MODELS_ROOT."""
    try:
        return _resolve_checkpoint(location)
    except (OSError, ValueError) as exc:  # a name too long, a link loop, a NUL byte: not a checkpoint
        raise CheckpointError(f"Checkpoint {location[:200]!r} cannot be read: {exc.__class__.__name__}.") from None


def _resolve_checkpoint(location: str) -> Path:
    root = Path(settings.MODELS_ROOT).resolve()
    if not location or not location.strip():
        raise CheckpointError("No checkpoint location given.")
    path = (root / location).resolve()
    if not path.is_relative_to(root):
        raise CheckpointError(f"Checkpoint {location!r} is outside MODELS_ROOT ({root}).")
    if not path.exists():
        raise CheckpointError(f"Checkpoint {location!r} does not exist under MODELS_ROOT ({root}).")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"Checkpoint folder {location!r} has no model_index.json: not a diffusers pipeline.")
        _check_links(path, root, location)
    elif path.suffix != ".safetensors":
        raise CheckpointError(f"Checkpoint file {location!r} is not a .safetensors file.")
    return path


def _check_links(folder: Path, root: Path, location: str) -> None:
    """A link inside a checkpoint folder must lead to a file or folder under MODELS_ROOT: loading
    follows links, and a link to /etc/… would be read (and hashed, and served) as weights."""
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            entry = Path(current) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(root) or not target.exists():
                    inside = entry.relative_to(folder)
                    raise CheckpointError(
                        f"Checkpoint {location!r}: {inside} links outside MODELS_ROOT ({root}) or to nothing."
                    )


def resolve_adapter(location: str) -> Path:
    """The absolute path of a LoRA weights file, refusing anything outside MODELS_ROOT."""
    try:
        return _resolve_adapter(location)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Adapter {location[:200]!r} cannot be read: {exc.__class__.__name__}.") from None


def _resolve_adapter(location: str) -> Path:
    root = Path(settings.MODELS_ROOT).resolve()
    if not location or not location.strip():
        raise CheckpointError("No adapter location given.")
    path = (root / location.strip()).resolve()
    if not path.is_relative_to(root):
        raise CheckpointError(f"Adapter {location!r} is outside MODELS_ROOT ({root}).")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise CheckpointError(f"Adapter folder {location!r} must hold exactly one .safetensors file.")
        path = files[0].resolve()
        if not path.is_relative_to(root):
            raise CheckpointError(f"Adapter {location!r} links outside MODELS_ROOT ({root}).")
    if not path.is_file():
        raise CheckpointError(f"Adapter {location!r} does not exist under MODELS_ROOT ({root}).")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"Adapter file {location!r} is not a .safetensors file.")
    return path


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a .safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safe_open(str(file), framework="numpy") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointError(
            f"{file.name} is not a readable .safetensors file ({type(exc).__name__}: {exc})."
        ) from exc


def endpoint_hash(base_url: str, remote_model: str) -> str:
    """A hosted engine's content hash: it has no files, so its endpoint and model name identify it."""
    return hashlib.sha256(json.dumps([base_url, remote_model]).encode()).hexdigest()


HASH_CHUNK_BYTES = 1 << 20


def hash_checkpoint(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    """sha256 over every file of a checkpoint (relative names and contents, in sorted order).

    `progress(done, total)` hears the bytes read so far after every chunk (and 0 before the first).
    """
    digest = hashlib.sha256()
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        total, done = sum(file.stat().st_size for file in files), 0
        if progress is not None:
            progress(done, total)
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(HASH_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except OSError as exc:  # a file gone or unreadable meanwhile: the checkpoint's fault, not the worker's
        raise CheckpointError(f"{path.name} cannot be read: {type(exc).__name__}: {exc}.") from None
    return digest.hexdigest()


def files_stamp(path: Path) -> str:
    """A fingerprint of a checkpoint's file names, sizes and modification times (no file is read)."""
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        entries = [(str(f.relative_to(path) if path.is_dir() else f.name), f.stat()) for f in files]
    except OSError as exc:
        raise CheckpointError(f"{path.name} cannot be read: {type(exc).__name__}: {exc}.") from None
    listing = [[name, st.st_size, st.st_mtime_ns] for name, st in entries]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


class LaneQuerySet(models.QuerySet):
    def using_version(self, version: ModelVersion) -> LaneQuerySet:
        """Lanes the version serves: as their active, canary or refine version."""
        return self.filter(Q(active_version=version) | Q(canary_version=version) | Q(refine_version=version))


class Lane(models.Model):
    name = models.SlugField(max_length=50, unique=True)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    active_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="lanes")
    default_steps = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    min_steps = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    max_steps = models.PositiveSmallIntegerField(default=50, validators=[MinValueValidator(1)])
    default_guidance = models.FloatField(default=7.5)
    min_guidance = models.FloatField(default=0.0)
    max_guidance = models.FloatField(default=20.0)
    default_width = models.PositiveIntegerField(default=64)
    default_height = models.PositiveIntegerField(default=64)
    min_size = models.PositiveIntegerField(default=32)
    max_size = models.PositiveIntegerField(default=1024)
    max_concurrency = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    queue = models.CharField(max_length=100, blank=True, help_text="Celery queue; defaults to lane.<name>.")
    fallback = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    latency_slo_ms = models.PositiveIntegerField(default=1200)
    default_priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.STANDARD)
    # Admission: queued + running jobs at which the lane counts as saturated (background work
    # is deferred, standard work goes to the fallback), and past which every brief is refused.
    defer_depth = models.PositiveIntegerField(default=8, validators=[MinValueValidator(1)])
    hard_cap = models.PositiveIntegerField(default=64, validators=[MinValueValidator(1)])
    # Its running jobs may pause at a step boundary for a higher class waiting for the lane (lanes.preemption).
    preemptible = models.BooleanField(default=True, db_default=True)
    # Cascade: a draft at the lane's size and steps, then a batched img2img refine at scale x.
    cascade = models.BooleanField(default=False)
    refine_scale = models.PositiveSmallIntegerField(default=2, validators=[MinValueValidator(1)])
    refine_steps = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    refine_strength = models.FloatField(default=0.5)
    refine_batch_size = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    refine_max_wait_ms = models.PositiveIntegerField(default=50)
    # Typography verification of final images that must carry text.
    verify = models.BooleanField(default=True)
    verify_threshold = models.FloatField(
        default=0.95, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Similarity (1 - normalized edit distance) an expected string needs to pass.",
    )  # fmt: skip
    verify_case_sensitive = models.BooleanField(default=True)
    verify_ignore_punctuation = models.BooleanField(default=False)
    autofix = models.BooleanField(default=False, help_text="Overlay the expected text on flagged images.")
    # The refine stage's pipeline: a latent x2 upscaler, or (empty) img2img with the active version.
    refine_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="refining_lanes"
    )
    # Draining: admits nothing new, but finishes what is queued, deferred and running.
    draining = models.BooleanField(default=False)
    # Rollout: a canary version takes `canary_percent` of new jobs; each job is pinned to its version.
    canary_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="canary_lanes"
    )
    canary_percent = models.PositiveSmallIntegerField(
        default=0, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    canary_started_at = models.DateTimeField(null=True, blank=True)
    # Automatic rollback: the canary is compared with the active version over the window once
    # both arms have `canary_min_samples` finished jobs; any threshold crossed rolls it back.
    canary_window_minutes = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    canary_min_samples = models.PositiveIntegerField(default=20, validators=[MinValueValidator(1)])
    canary_max_error_rate_increase = models.FloatField(
        default=0.05, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Canary error rate minus the active version's, at most.",
    )  # fmt: skip
    canary_max_p95_ratio = models.FloatField(
        default=1.5,
        validators=[MinValueValidator(1.0)],
        help_text="Canary p95 run time over the active one's, at most.",
    )
    canary_max_flag_rate_increase = models.FloatField(
        default=0.10, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Canary verification flag rate minus the active version's, at most.",
    )  # fmt: skip
    # Shown to ops and admins until dismissed (an automatic rollback says why here).
    notice = models.CharField(max_length=500, blank=True)
    notice_at = models.DateTimeField(null=True, blank=True)
    # Optimistic concurrency: every control change bumps it; a change made against an old
    # revision is refused instead of silently overwriting someone else's.
    revision = models.PositiveIntegerField(default=1)

    objects = LaneQuerySet.as_manager()

    # Not columns: set on the instances with_live_counts() (lanes/models/jobs.py) returns, for pages to show.
    queued: int
    running: int
    deferred: int
    no_consumer: bool  # set by with_consumers

    # What a canary is: cleared together whenever it ends (promoted, stopped, rolled back).
    CANARY_FIELDS = ("canary_version", "canary_percent", "canary_started_at")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_concurrency__gte=1),
                name="lane_max_concurrency_positive",
                violation_error_message="At least one job at a time per GPU.",
            ),
            models.CheckConstraint(
                condition=Q(hard_cap__gte=F("defer_depth")),
                name="lane_hard_cap_above_defer",
                violation_error_message="The hard cap must be at least the defer depth.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.queue:
            self.queue = f"lane.{self.name}"
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """The lane's versions, refine stage and sizes fit together (checked for the canary too)."""
        errors: dict[str, str] = {}
        active = self.active_version if self.active_version_id else None
        canary = self.canary_version if self.canary_version_id else None
        refiner = self.refine_version
        for field, version in (("active_version", active), ("canary_version", canary)):
            if version is None:
                continue
            spec = version.spec
            if not spec.text2img:
                errors[field] = f"{version.name} ({spec.label}) cannot render from a prompt."
            elif self.cascade and version.is_hosted:
                errors[field] = f"{version.name} is a hosted engine: its images cannot be a cascade's draft."
            elif self.cascade and refiner is None and not spec.img2img:
                errors[field] = f"{spec.label} has no img2img pass: pick a refine version."
            elif self.cascade and refiner is not None and refiner.family not in refine_partners(version.family):
                errors[field] = f"{refiner.name} ({refiner.spec.label}) cannot refine {spec.label} drafts."
            for size in ("default_width", "default_height"):
                if getattr(self, size) % spec.size_multiple:
                    errors[size] = f"{spec.label} renders sizes in multiples of {spec.size_multiple} pixels."
        if refiner is not None:
            if refiner.spec.upscale and self.refine_scale != 2:
                errors["refine_scale"] = "A latent x2 upscaler refines at scale 2."
            elif not (refiner.spec.upscale or refiner.spec.img2img):
                errors["refine_version"] = f"{refiner.name} ({refiner.spec.label}) can neither upscale nor refine."
        if errors:
            raise ValidationError(errors)

    def clear_canary(self) -> list[str]:
        """Forget the canary (every new job goes to the active version); returns the fields to save."""
        self.canary_version, self.canary_percent, self.canary_started_at = None, 0, None
        return list(self.CANARY_FIELDS)

    @property
    def refine_queue(self) -> str:
        return f"{self.queue}.refine"

    @property
    def mode(self) -> str:
        if self.enabled:
            return "enabled"
        return "draining" if self.draining else "disabled"

    @property
    def queues(self) -> list[str]:
        return [self.queue, self.refine_queue] if self.cascade else [self.queue]

    @property
    def job_queues(self) -> list[str]:
        """The queues its new jobs are sent to: a hosted version's go to the hosted workers' queue (see dispatch)."""
        if self.active_version.is_hosted:
            return [settings.HOSTED_QUEUE]
        return self.queues

    def unconsumed(self, consumed: set[str]) -> bool:
        """Whether a job sent to this lane now would wait on a queue that none of `consumed` is."""
        return not set(self.job_queues) <= consumed


def refine_partners(family: str) -> tuple[str, ...]:
    """Families whose pass may refine a draft of `family`: its own img2img, SDXL's refiner for SDXL, the
    latent x2 upscaler for SD 1.x (its VAE and text encoder are SD 1.x's)."""
    extra: dict[str, tuple[str, ...]] = {
        ModelVersion.Family.SDXL: (ModelVersion.Family.SDXL_REFINER,),
        ModelVersion.Family.SD15: (ModelVersion.Family.LATENT_UPSCALER_X2,),
    }
    return tuple(str(p) for p in (family, *extra.get(family, ())))


class LaneAdapter(models.Model):
    """A LoRA adapter a lane serves: pinned ones apply to every job, the others when a brief picks them."""

    lane = models.ForeignKey(Lane, on_delete=models.CASCADE, related_name="adapter_links")
    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="lane_links")
    weight = models.FloatField(default=1.0, validators=[MinValueValidator(-4.0), MaxValueValidator(4.0)])
    pinned = models.BooleanField(default=False, help_text="Applied to every job (a house style).")

    class Meta:
        ordering = ["lane__name", "-pinned", "adapter__name"]
        constraints = [models.UniqueConstraint(fields=["lane", "adapter"], name="one_link_per_lane_adapter")]

    def __str__(self) -> str:
        return f"{self.lane_id}: {self.adapter_id} x{self.weight}"


class LaneRelease(models.Model):
    """One period of a version serving as a lane's active version: the lane's version history."""

    class Outcome(models.TextChoices):
        SERVING = "serving"
        SUPERSEDED = "superseded"
        ROLLED_BACK = "rolled_back", "rolled back"

    lane = models.ForeignKey(Lane, on_delete=models.CASCADE, related_name="releases")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="releases")
    how = models.CharField(max_length=40, help_text="activated, promoted from canary, rollback, policy…")
    started_at = models.DateTimeField(default=timezone.now)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices, default=Outcome.SERVING)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lane"], condition=Q(outcome="serving"), name="one_serving_release_per_lane"
            )
        ]

    def __str__(self) -> str:
        return f"{self.lane_id}: {self.version_id} ({self.outcome})"


class Route(models.Model):
    """The routing policy: an intent names the lane its briefs go to."""

    intent = models.SlugField(max_length=50, unique=True)
    label = models.CharField(max_length=100, blank=True)
    lane = models.ForeignKey(Lane, on_delete=models.PROTECT, related_name="routes")
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.STANDARD)

    class Meta:
        ordering = ["intent"]

    def __str__(self) -> str:
        return self.label or self.intent
