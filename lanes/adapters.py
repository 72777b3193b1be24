"""LoRA adapters: registered against a model version, validated on a worker, served by lanes.

A LoRA file is checked at registration against its base version without loading either:
its tensor names say which component it patches (a UNet LoRA cannot patch Flux), and each
low-rank pair must match the shape of the weight it patches in the base checkpoint's files.
Formats Laneway cannot read statically (kohya's `lora_unet_…` names) are left to validation,
which renders the smoke image with the adapter through the same code as jobs
(registry.validate_adapter, on a worker).

A lane pins adapters (applied to every job: a team's house style) or offers them (a brief
may pick them). A job stores the adapters and weights it rendered with.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction

from . import dispatch
from .changes import ControlError, acting_user, describe_errors, locked_lane, record_change
from .models import (
    Adapter,
    AuditEvent,
    CheckpointError,
    Lane,
    LaneAdapter,
    ModelVersion,
    resolve_adapter,
    tensor_shapes,
)
from .models import hash_checkpoint as hash_file

# Which part of a pipeline a LoRA tensor patches, by its name's first segment (diffusers/peft format).
COMPONENT_PREFIXES = ("unet.", "transformer.", "text_encoder.", "text_encoder_2.")
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora.up.weight")


def _base_folder(version: ModelVersion) -> Path | None:
    """The diffusers folder whose component files hold the base weights (None for a single file)."""
    path = version.checkpoint_path()
    return path if path.is_dir() else None


def check_lora_file(version: ModelVersion, path: Path) -> str | None:
    """Why the LoRA file cannot patch the version (None when it fits, or cannot be told statically)."""
    spec = version.spec
    if not spec.lora:
        return f"{version.name} is {spec.label}, which takes no LoRA adapters."
    try:
        lora = tensor_shapes(path)
    except CheckpointError as exc:
        return str(exc)
    if not lora:
        return f"{path.name} holds no tensors."
    diffusers_format = [k for k in lora if k.startswith(COMPONENT_PREFIXES)]
    if not diffusers_format:
        return None  # another naming scheme (kohya, …): validation's smoke render decides
    denoiser = spec.lora_prefix
    other = "transformer" if denoiser == "unet" else "unet"
    if any(k.startswith(other + ".") for k in diffusers_format):
        kind = "a UNet model (SD 1.x, SDXL)" if other == "unet" else "a transformer model (SD3, Flux)"
        return f"{path.name} is a LoRA for {kind}; {version.name} is {spec.label}."
    base = _base_folder(version)
    if base is None:
        return None
    base_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in lora.items():
        component, _, rest = key.partition(".")
        suffix = next((s for s in LORA_SUFFIXES if rest.endswith(s)), None)
        if suffix is None or component not in ("unet", "transformer", "text_encoder", "text_encoder_2"):
            continue
        if component not in base_shapes:
            files = sorted((base / component).glob("*.safetensors"))
            base_shapes[component] = {key: shape for file in files for key, shape in tensor_shapes(file).items()}
        if not base_shapes[component]:
            continue
        module = rest[: -len(suffix)]
        target = base_shapes[component].get(module + ".weight") or base_shapes[component].get(
            module + ".base_layer.weight"
        )
        if target is None:
            return f"{path.name} patches {component}.{module}, which {version.name} does not have."
        down = suffix in (".lora_A.weight", ".lora.down.weight")
        # A low-rank pair: down is (rank, in, …), up is (out, rank, …); the base weight is (out, in, …).
        if (down and shape[1] != target[1]) or (not down and shape[0] != target[0]):
            return (
                f"{path.name} does not fit {version.name}: {key} has shape {list(shape)} but "
                f"{component}.{module}.weight is {list(target)}."
            )
    return None


def register_adapter(
    by, *, version: ModelVersion, name: str, location: str, default_weight: float = 1.0, description: str = "",
    validate: bool = True,
) -> Adapter:  # fmt: skip
    """Record a LoRA file under MODELS_ROOT for a version and queue its validation.

    Raises ControlError with per-field `errors` for bad input; stores nothing then.
    """
    errors: dict[str, str] = {}
    name = (name or "").strip()
    try:
        validate_slug(name)
    except ValidationError:
        errors["name"] = "Use letters, digits, hyphens and underscores only."
    if name and Adapter.objects.filter(version=version, name=name).exists():
        errors["name"] = f"{version.name} already has an adapter named {name!r}."
    if not -4.0 <= default_weight <= 4.0:
        errors["default_weight"] = "A LoRA weight between -4 and 4."
    path = None
    try:
        path = resolve_adapter(location)
    except CheckpointError as exc:
        errors["location"] = str(exc)
    if path is not None:
        problem = check_lora_file(version, path)
        if problem:
            errors["location"] = problem
    if errors or path is None:
        raise ControlError(describe_errors(errors), errors)
    with transaction.atomic():
        adapter = Adapter.objects.create(
            version=version,
            name=name,
            location=location.strip(),
            content_hash=hash_file(path),
            default_weight=default_weight,
            description=description[:200],
            registered_by=acting_user(by),
        )
        AuditEvent.record(
            by, "adapter.register", version=version, target=str(adapter),
            after={"location": adapter.location, "content_hash": adapter.content_hash},
        )  # fmt: skip
        if validate:
            transaction.on_commit(lambda: dispatch.validate_adapter(adapter), robust=True)
    return adapter


def link(lane: Lane, adapter: Adapter, by, *, weight: float | None = None, pinned: bool = False,
         expected_revision: int | None = None) -> LaneAdapter:  # fmt: skip
    """Serve a validated adapter on a lane: pinned (every job) or offered (briefs may pick it)."""
    if adapter.status != Adapter.Status.VALIDATED:
        raise ControlError(f"{adapter} is {adapter.get_status_display()}; only validated adapters serve lanes.")
    weight = adapter.default_weight if weight is None else weight
    if not -4.0 <= weight <= 4.0:
        raise ControlError("A LoRA weight between -4 and 4.", {"weight": "A LoRA weight between -4 and 4."})
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        served = {lane.active_version_id, lane.canary_version_id}
        if adapter.version_id not in served:
            raise ControlError(f"{adapter} is for {adapter.version.name}, which lane {lane.name} does not serve.")
        entry, _ = LaneAdapter.objects.update_or_create(
            lane=lane, adapter=adapter, defaults={"weight": weight, "pinned": pinned}
        )
        record_change(
            lane, [], by, "lane.adapter", version=adapter.version,
            after={"adapter": adapter.name, "weight": weight, "pinned": pinned},
        )  # fmt: skip
    return entry


def unlink(lane: Lane, adapter: Adapter, by, *, expected_revision: int | None = None) -> None:
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        deleted, _ = LaneAdapter.objects.filter(lane=lane, adapter=adapter).delete()
        if not deleted:
            raise ControlError(f"Lane {lane.name} does not serve {adapter}.")
        record_change(lane, [], by, "lane.adapter.remove", version=adapter.version, before={"adapter": adapter.name})


def for_job(lane: Lane, version: ModelVersion, requested: list[str]) -> tuple[list[dict], list[str]]:
    """The adapters a job on this lane and version renders with: the pinned ones and those requested.

    Returns (entries to store on the job, requested names the lane does not offer for the version).
    """
    links = [
        entry
        for entry in LaneAdapter.objects.filter(lane=lane, adapter__version=version).select_related("adapter")
        if entry.adapter.status == Adapter.Status.VALIDATED
    ]
    offered = {entry.adapter.name: entry for entry in links}
    chosen = [entry for entry in links if entry.pinned]
    missing = []
    for name in dict.fromkeys(requested):
        found = offered.get(name)
        if found is None:
            missing.append(name)
        elif not found.pinned:
            chosen.append(found)
    return [{"id": e.adapter_id, "name": e.adapter.name, "weight": e.weight} for e in chosen], missing
