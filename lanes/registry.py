"""Model versions from registration to retirement.

A version is registered (staged, its content hash recorded), then validated on a worker:
its files are hashed again and a smoke image is rendered through the same loading code as
jobs. Only a validated version may serve a lane (see rollout).
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.utils import timezone
from PIL import Image

from . import dispatch, engines
from .changes import ControlError, acting_user
from .models import AuditEvent, CheckpointError, Lane, ModelVersion, hash_checkpoint, resolve_checkpoint

SMOKE_PROMPT = "Laneway smoke test: a red square on a white background"
SMOKE_SEED = 1234
SMOKE_SIZE = 64
SMOKE_STEPS = 2


def register_version(
    by, *, name: str, location: str, family: str = ModelVersion.Family.STABLE_DIFFUSION,
    config_location: str = "", dtype: str = ModelVersion.DType.FLOAT32, validate: bool = True,
) -> ModelVersion:  # fmt: skip
    """Record a checkpoint under MODELS_ROOT as a staged version and queue its validation.

    Raises ControlError with per-field `errors` for bad input; stores nothing then.
    """
    errors: dict[str, str] = {}
    name = (name or "").strip()
    try:
        validate_slug(name)
    except ValidationError:
        errors["name"] = "Use letters, digits, hyphens and underscores only."
    if name and ModelVersion.objects.filter(name=name).exists():
        errors["name"] = f"A version named {name!r} is already registered."
    if family not in ModelVersion.Family.values:
        errors["family"] = f"Unknown pipeline family {family!r}."
    if dtype not in ModelVersion.DType.values:
        errors["dtype"] = f"Unknown dtype {dtype!r}."
    path = None
    try:
        path = resolve_checkpoint((location or "").strip())
    except CheckpointError as exc:
        errors["location"] = str(exc)
    if path is not None and path.is_file():
        if not config_location:
            errors["config_location"] = "A single-file checkpoint needs a config folder (configs cannot be downloaded)."
        else:
            try:
                resolve_checkpoint(config_location.strip())
            except CheckpointError as exc:
                errors["config_location"] = str(exc)
    if errors or path is None:  # path is None only when resolve_checkpoint failed, which is in errors
        raise ControlError("; ".join(f"{k}: {v}" for k, v in errors.items()), errors)
    digest = hash_checkpoint(path)
    with transaction.atomic():
        version = ModelVersion.objects.create(
            name=name,
            family=family,
            location=location.strip(),
            config_location=(config_location or "").strip(),
            dtype=dtype,
            content_hash=digest,
            status=ModelVersion.Status.STAGED,
            registered_by=acting_user(by),
        )
        AuditEvent.record(
            by, "version.register", version=version,
            after={"location": version.location, "family": family, "content_hash": digest},
        )  # fmt: skip
        if validate:
            transaction.on_commit(lambda: dispatch.validate_version(version))
    return version


def request_validation(version: ModelVersion, by) -> None:
    """Validate a staged or failed version again (after fixing its files, say)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status not in (ModelVersion.Status.STAGED, ModelVersion.Status.INVALID):
            raise ControlError(f"{version.name} is {version.status}; only staged or failed versions are validated.")
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.STAGED, validation_error="")
        AuditEvent.record(by, "version.validate", version=version, before={"status": version.status})
        transaction.on_commit(lambda: dispatch.validate_version(version))


def smoke_render(version: ModelVersion):
    """Load the version the way jobs load it and render the fixed smoke image; returns (image, seconds)."""
    started = time.perf_counter()
    with engines.engine_cache.use(version, width=SMOKE_SIZE, height=SMOKE_SIZE) as engine:
        if version.family == ModelVersion.Family.LATENT_UPSCALER_X2:
            source = Image.new("RGB", (SMOKE_SIZE // 2, SMOKE_SIZE // 2), (200, 40, 40))
            result = engine.upscale(
                prompts=[SMOKE_PROMPT], images=[source], seeds=[SMOKE_SEED], steps=SMOKE_STEPS,
                strength=1.0, guidance=0.0,
            )  # fmt: skip
            image = result.images[0]
        else:
            result = engine.run(
                prompt=SMOKE_PROMPT, seed=SMOKE_SEED, width=SMOKE_SIZE, height=SMOKE_SIZE,
                steps=SMOKE_STEPS, guidance=7.5,
            )  # fmt: skip
            image = result.image
    return image, time.perf_counter() - started


def record_smoke(version: ModelVersion, worker: str = "") -> str | None:
    """Smoke-render the version and store the image and its time; returns the error, or None."""
    try:
        image, seconds = smoke_render(version)
    except Exception as exc:  # the version's verdict, never the worker's crash
        return f"{type(exc).__name__}: {exc}"[:4000]
    relative = f"versions/{version.pk}/smoke.png"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG")
    now = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(
        smoke_image=relative, smoke_seconds=seconds, validated_on=worker, validated_at=now
    )
    version.smoke_image, version.smoke_seconds, version.validated_on, version.validated_at = (
        relative,
        seconds,
        worker,
        now,
    )
    return None


def run_validation(version: ModelVersion, worker: str = "") -> bool:
    """Check the files still hash as registered, smoke-render, and record the verdict. True if valid."""
    claimed = ModelVersion.objects.filter(
        pk=version.pk, status__in=(ModelVersion.Status.STAGED, ModelVersion.Status.INVALID)
    ).update(status=ModelVersion.Status.VALIDATING)
    if not claimed:
        return False
    error: str | None
    try:
        digest = version.compute_hash()
    except CheckpointError as exc:
        error = str(exc)
    else:
        error = None
        if version.content_hash and digest != version.content_hash:
            error = (
                f"The checkpoint's files changed since registration (sha256 {digest[:12]}…, registered "
                f"{version.content_hash[:12]}…): register it again as a new version."
            )
    error = error or record_smoke(version, worker)
    if error:
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.INVALID, validation_error=error, validated_on=worker,
            validated_at=timezone.now(),
        )  # fmt: skip
        return False
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.VALIDATED, validation_error="")
    version.refresh_from_db()
    return True


def validate(version_id: int, worker: str) -> str:
    """A worker's validation of a version: what became of it."""
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return "missing"
    return "validated" if run_validation(version, worker) else ModelVersion.objects.get(pk=version_id).status


def retire_version(version: ModelVersion, by) -> None:
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == ModelVersion.Status.RETIRED:
            raise ControlError(f"{version.name} is already retired.")
        users = list(Lane.objects.using_version(version).values_list("name", flat=True))
        if users:
            raise ControlError(f"{version.name} still serves lane {', '.join(users)}: switch those lanes first.")
        before = version.status
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.RETIRED)
        version.status = ModelVersion.Status.RETIRED
        AuditEvent.record(by, "version.retire", version=version, before={"status": before}, after={"status": "retired"})
