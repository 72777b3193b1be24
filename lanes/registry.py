"""Model versions from registration to retirement.

A version is registered (staged) after the checks that are quick, then validated on a
worker: its files are hashed there, with progress stored as it goes (a big checkpoint takes
seconds to read), and the first digest becomes its content hash, which every later
validation compares against; then a smoke image is rendered through the same loading code
as jobs. Only a validated version may serve a lane (see rollout).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_slug
from django.db import transaction
from django.utils import timezone
from PIL import Image

from . import dispatch, families, lifecycle
from .changes import ControlError, acting_user, describe_errors
from .engines import LoraRef
from .models import (
    Adapter,
    AuditEvent,
    CheckpointError,
    Lane,
    ModelVersion,
    endpoint_hash,
    files_stamp,
    hash_checkpoint,
    resolve_checkpoint,
    tensor_shapes,
)

SMOKE_PROMPT = "Laneway smoke test: a red square on a white background"
SMOKE_SEED = 1234
SMOKE_SIZE = 64
SMOKE_STEPS = 2
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*_(KEY|TOKEN)")


def register_version(
    by, *, name: str, location: str = "", family: str = "", config_location: str = "",
    dtype: str = ModelVersion.DType.FLOAT32, distilled: bool | None = None, base_url: str = "",
    remote_model: str = "", api_key_env: str = "", timeout_seconds: float = 60.0, max_concurrency: int = 4,
    price_per_image: float = 0.0, validate: bool = True,
) -> ModelVersion:  # fmt: skip
    """Record a checkpoint under MODELS_ROOT (or a hosted engine) as a staged version and queue its validation.

    A blank `family` is detected from the checkpoint's model_index.json (a single file's from
    its config folder). Raises ControlError with per-field `errors` for bad input; stores nothing then.
    """
    errors: dict[str, str] = {}
    name = (name or "").strip()
    family = (family or "").strip()
    try:
        validate_slug(name)
    except ValidationError:
        errors["name"] = "Use letters, digits, hyphens and underscores only."
    if name and ModelVersion.objects.filter(name=name).exists():
        errors["name"] = f"A version named {name!r} is already registered."
    if family and family not in ModelVersion.Family.values:
        errors["family"] = f"Unknown pipeline family {family!r}; one of: {', '.join(ModelVersion.Family.values)}."
    if dtype not in ModelVersion.DType.values:
        errors["dtype"] = f"Unknown dtype {dtype!r}."
    fields: dict = {}
    # A checkpoint's files are hashed by its validation task, not here: reading gigabytes would hold the request.
    digest = ""
    if family == ModelVersion.Family.HTTP:
        fields = _hosted_fields(errors, base_url, remote_model, api_key_env, timeout_seconds, max_concurrency)
        fields["price_per_image"] = price_per_image
        if price_per_image is None or price_per_image < 0:
            errors["price_per_image"] = "The price per image cannot be negative."
        digest = endpoint_hash(fields["base_url"], fields["remote_model"])
        location = config_location = ""
    elif "family" not in errors:
        detected, distilled_detected = _checkpoint_family(errors, location, config_location)
        if detected and family and detected != family:
            errors["family"] = (
                f"{location.strip()} is a {families.get(detected).label} checkpoint, not {families.get(family).label}."
            )
        family = family or detected
        if distilled is None:
            distilled = distilled_detected
    if errors:
        raise ControlError(describe_errors(errors), errors)
    with transaction.atomic():
        version = ModelVersion.objects.create(
            name=name,
            family=family,
            location=(location or "").strip(),
            config_location=(config_location or "").strip(),
            dtype=dtype,
            distilled=bool(distilled),
            content_hash=digest,
            status=ModelVersion.Status.STAGED,
            registered_by=acting_user(by),
            **fields,
        )
        after = {"location": version.location or version.base_url, "family": family}
        if digest:  # a hosted engine's; a checkpoint's is recorded as "version.hashed" when a worker reads it
            after["content_hash"] = digest
        AuditEvent.record(by, "version.register", version=version, after=after)
        if validate:
            transaction.on_commit(lambda: dispatch.validate_version(version), robust=True)
    return version


def _checkpoint_family(errors: dict[str, str], location: str, config_location: str) -> tuple[str, bool]:
    """(family, distilled) of a checkpoint under MODELS_ROOT; problems go to `errors`."""
    try:
        path = resolve_checkpoint((location or "").strip())
    except CheckpointError as exc:
        errors["location"] = str(exc)
        return "", False
    folder = path
    if path.is_file():
        if not (config_location or "").strip():
            errors["config_location"] = (
                f"The single-file checkpoint {location.strip()} needs a config folder: a diffusers folder "
                "of the same family under MODELS_ROOT (configs cannot be downloaded)."
            )
            return "", False
        try:
            folder = resolve_checkpoint(config_location.strip())
        except CheckpointError as exc:
            errors["config_location"] = str(exc)
            return "", False
        if not folder.is_dir():
            errors["config_location"] = f"{config_location.strip()} is a file; the config must be a diffusers folder."
            return "", False
    try:
        family = families.detect_family(folder)
    except families.UnknownFamily as exc:
        errors["config_location" if path.is_file() else "location"] = str(exc)
        return "", False
    if path.is_file():
        # diffusers loads a single file as whatever class it is asked for: a file of another family
        # would fail halfway through loading (or, worse, load). Its tensor names tell its family.
        try:
            marked = families.file_families(tensor_shapes(path))
        except CheckpointError as exc:
            errors["location"] = str(exc)
            return "", False
        if marked and family not in marked:
            # An SDXL base and its refiner share their tensor names: call it SDXL.
            named = marked - {families.SDXL_REFINER.value} or marked
            names = " or ".join(sorted(families.get(f).label for f in named))
            errors["config_location"] = (
                f"{path.name} is a {names} checkpoint, but its config folder {config_location.strip()} "
                f"is {families.get(family).label}."
            )
            return "", False
    return family, families.detect_distilled(folder, family)


def _hosted_fields(errors, base_url, remote_model, api_key_env, timeout_seconds, max_concurrency) -> dict:
    base_url = (base_url or "").strip().rstrip("/")
    try:
        URLValidator(schemes=["http", "https"])(base_url)
    except ValidationError:
        errors["base_url"] = "A hosted engine needs the API's base URL (http or https), e.g. https://api.openai.com/v1."
    else:
        parts = urlsplit(base_url)
        if parts.username or parts.password or parts.query or parts.fragment:
            # It is shown on pages and in job errors: a key must live in the environment variable only.
            errors["base_url"] = "The base URL may not carry credentials or a query: put the key in its variable."
    remote_model = (remote_model or "").strip()
    if not remote_model:
        errors["remote_model"] = "Name the model the API renders with."
    api_key_env = (api_key_env or "").strip()
    if not ENV_NAME.fullmatch(api_key_env):
        # Only a variable meant for a key: its value is sent to the URL above.
        errors["api_key_env"] = (
            "Name the environment variable that holds the API key, ending in _KEY or _TOKEN (e.g. OPENAI_API_KEY)."
        )
    elif not os.environ.get(api_key_env):
        errors["api_key_env"] = f"The environment variable {api_key_env} is not set (the key is read from it)."
    if not timeout_seconds or timeout_seconds <= 0:
        errors["timeout_seconds"] = "The timeout must be a positive number of seconds."
    if not max_concurrency or max_concurrency < 1:
        errors["max_concurrency"] = "At least one request at a time."
    return {
        "base_url": base_url,
        "remote_model": remote_model,
        "api_key_env": api_key_env,
        "timeout_seconds": timeout_seconds,
        "max_concurrency": max_concurrency,
    }


def request_validation(version: ModelVersion, by) -> None:
    """Validate a staged or failed version again (after fixing its files, say)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status not in (ModelVersion.Status.STAGED, ModelVersion.Status.INVALID):
            raise ControlError(f"{version.name} is {version.status}; only staged or failed versions are validated.")
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.STAGED, validation_error="")
        AuditEvent.record(by, "version.validate", version=version, before={"status": version.status})
        transaction.on_commit(lambda: dispatch.validate_version(version), robust=True)


def smoke_render(version: ModelVersion, adapters: list | tuple = ()):
    """Load the version the way jobs load it and render the fixed smoke image; returns (image, seconds)."""
    started = time.perf_counter()
    # A hosted API is asked for 1024x1024, the one size every OpenAI image model takes; a checkpoint renders tiny.
    size = version.spec.defaults.size if version.is_hosted and version.spec.defaults else SMOKE_SIZE
    source = Image.new("RGB", (size, size), (200, 40, 40))
    with lifecycle.use_engine(version, width=size, height=size) as engine:
        if version.spec.upscale:
            small = source.resize((size // 2, size // 2))
            result = engine.upscale(
                prompts=[SMOKE_PROMPT], images=[small], seeds=[SMOKE_SEED], steps=SMOKE_STEPS,
                strength=1.0, guidance=0.0,
            )  # fmt: skip
        elif not version.spec.text2img:  # a refiner: img2img over a plain source image
            result = engine.refine(
                prompts=[SMOKE_PROMPT], images=[source], seeds=[SMOKE_SEED], steps=SMOKE_STEPS,
                strength=0.5, guidance=5.0, adapters=adapters,
            )  # fmt: skip
        else:
            result = engine.run(
                prompt=SMOKE_PROMPT, seed=SMOKE_SEED, width=size, height=size,
                steps=SMOKE_STEPS, guidance=7.5, adapters=adapters,
            )  # fmt: skip
    return result.images[0], time.perf_counter() - started


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
    """Hash the files (recording the hash the first time, comparing it after), smoke-render, and
    record the verdict. True if valid."""
    claimed = ModelVersion.objects.filter(
        pk=version.pk, status__in=(ModelVersion.Status.STAGED, ModelVersion.Status.INVALID)
    ).update(status=ModelVersion.Status.VALIDATING, hash_bytes_done=0, hash_bytes_total=0, validated_on=worker)
    if not claimed:
        return False
    version.refresh_from_db()  # the stored hash, not the caller's copy of it
    error = check_hash(version, worker) or record_smoke(version, worker)
    if error:
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.INVALID, validation_error=error, validated_on=worker,
            validated_at=timezone.now(),
        )  # fmt: skip
        return False
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.VALIDATED, validation_error="")
    version.refresh_from_db()
    return True


def check_hash(version: ModelVersion, worker: str = "") -> str | None:
    """Hash the version's files, storing progress; the first digest becomes its content hash, a
    later one must equal it. Returns the error, or None."""
    try:
        # Stamped before reading: a file changed while it is hashed leaves a stamp that no longer matches.
        stamp = "" if version.is_hosted else files_stamp(version.checkpoint_path())
        digest = version.compute_hash(_hash_progress(version))
    except CheckpointError as exc:
        return str(exc)
    if not digest:  # only a hosted version can get here, one stored without its endpoint hash
        return "The version has no content hash: register it again."
    if not version.content_hash:
        with transaction.atomic():
            # Conditional: a hash recorded meanwhile is compared below, never overwritten.
            if ModelVersion.objects.filter(pk=version.pk, content_hash="").update(
                content_hash=digest, files_stamp=stamp
            ):
                version.content_hash = digest
                AuditEvent.record(None, "version.hashed", version=version, after={"content_hash": digest}, note=worker)
                return None
        version.refresh_from_db(fields=["content_hash"])
    if digest != version.content_hash:
        return (
            f"The checkpoint's files changed since they were first hashed (sha256 {digest[:12]}…, recorded "
            f"{version.content_hash[:12]}…): register it again as a new version."
        )
    ModelVersion.objects.filter(pk=version.pk, content_hash=digest).update(files_stamp=stamp)
    version.files_stamp = stamp
    return None


def _hash_progress(version: ModelVersion) -> Callable[[int, int], None]:
    """Store hashing progress when it starts, when it ends, and between at most every PROGRESS_DB_EVERY_SECONDS."""
    last_saved: float | None = None

    def on_chunk(done: int, total: int) -> None:
        nonlocal last_saved
        now = time.monotonic()
        if last_saved is None or done >= total or now - last_saved >= settings.PROGRESS_DB_EVERY_SECONDS:
            version.record_hash_progress(done, total)
            last_saved = now

    return on_chunk


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


def validate_adapter(adapter_id: int) -> str:
    """A worker's smoke render of the adapter on its version: validated, or invalid with the reason."""
    adapter = Adapter.objects.select_related("version").filter(pk=adapter_id).first()
    if adapter is None:
        return "missing"
    error = None
    try:
        path = adapter.file_path()
        if hash_checkpoint(path) != adapter.content_hash:
            error = f"{path.name} changed since registration: register it again as a new adapter."
        else:
            ref = LoraRef(adapter.lora_name, path, adapter.default_weight)
            smoke_render(adapter.version, adapters=[ref])
    except Exception as exc:  # the adapter's verdict, never the worker's crash
        error = f"{type(exc).__name__}: {exc}"[:4000]
    status = Adapter.Status.INVALID if error else Adapter.Status.VALIDATED
    Adapter.objects.filter(pk=adapter.pk).update(status=status, validation_error=error or "")
    return str(status)
