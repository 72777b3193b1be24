"""Model versions (admins): register, validate, retire; and the routing policy as YAML."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpResponse
from ninja import Field, Router, Schema

from accounts.access import require_role
from accounts.models import Role
from lanes import policy as policy_file
from lanes import registry
from lanes.changes import ControlError
from lanes.models import ModelVersion

from ..access import get_version_for_user
from . import idempotency
from .core import BodyIn, ProblemError, SlugPath, errors, text

router = Router(tags=["versions"])

Family = Literal[tuple(ModelVersion.Family.values)]  # type: ignore[valid-type]
DType = Literal[tuple(ModelVersion.DType.values)]  # type: ignore[valid-type]


class VersionOut(Schema):
    name: str
    url: str
    family: str
    status: str
    location: str
    config_location: str
    dtype: str
    distilled: bool
    content_hash: str = Field(
        ..., description="sha256 of its files, recorded by validation when it first hashes them (empty until then)."
    )
    hash_bytes_done: int = Field(..., description="Validation's hashing progress: bytes of its files read so far…")
    hash_bytes_total: int = Field(..., description="…of this many (0 until hashing starts; a hosted engine has none).")
    base_url: str
    remote_model: str
    price_per_image: float
    created_at: datetime
    validated_at: datetime | None
    validation_error: str
    smoke_seconds: float | None
    lanes: list[str]


class RegisterVersionIn(BodyIn):
    name: str = text(..., max_length=100)
    family: Family | Literal[""] = Field("", description="Blank: detected from the checkpoint's files.")
    location: str = text(
        "", max_length=500, description="Under MODELS_ROOT: a diffusers folder or a .safetensors file."
    )
    config_location: str = text("", max_length=500, description="A single file's diffusers config folder.")
    dtype: DType = "float32"
    distilled: bool | None = None
    base_url: str = text("", max_length=500, description="Hosted engines (family http): the API's base URL.")
    remote_model: str = text("", max_length=200)
    api_key_env: str = text("", max_length=100)
    timeout_seconds: float = Field(60.0, ge=0.1, le=3600)
    max_concurrency: int = Field(4, ge=1, le=1000)
    price_per_image: float = Field(0.0, ge=0, le=1_000_000)


class PolicyOut(Schema):
    yaml: str
    digest: str = Field(..., description="Send back as `based_on` so a policy changed meanwhile is not overwritten.")


class PolicyIn(BodyIn):
    yaml: str = text(..., max_length=1_000_000)
    based_on: str | None = text(None, max_length=64)


class PolicyChanges(Schema):
    added_lanes: list[str]
    changed_lanes: dict[str, list[str]] = Field(..., description="Lane → the policy keys that change.")
    disabled_lanes: list[str] = Field(
        ..., description="Enabled before, disabled after (left out of the file, or enabled: false)."
    )
    added_intents: list[str]
    changed_intents: dict[str, list[str]] = Field(..., description="Intent → which of lane, priority, label change.")
    removed_intents: list[str]
    affected_jobs: dict[str, int] = Field(..., description="Changed or disabled lane → its queued and deferred jobs.")
    unconsumed_lanes: list[str] = Field(..., description="Enabled lanes whose queue no live worker consumes.")


class PolicyApplied(Schema):
    lanes: int
    intents: int
    digest: str = Field(..., description="The policy's digest after the call (unchanged on a dry run).")
    applied: bool = Field(..., description="False on a dry run: nothing was changed.")
    changes: PolicyChanges


def version_out(version: ModelVersion) -> dict:
    lanes = {lane.name for lane in version.lanes.all()} | {lane.name for lane in version.canary_lanes.all()}
    return {
        **{f: getattr(version, f) for f in VersionOut.model_fields if f not in ("url", "lanes")},
        "url": f"/api/v1/versions/{version.name}",
        "lanes": sorted(lanes),
    }


def _versions():
    return ModelVersion.objects.prefetch_related("lanes", "canary_lanes")


@router.get("/versions", response={200: list[VersionOut], **errors()})
def list_versions(request):
    require_role(request.user, Role.ADMIN, "Model versions are managed by admins.")
    return [version_out(v) for v in _versions()]


@router.get("/versions/{name}", response={200: VersionOut, **errors()})
def get_version(request, name: SlugPath):
    return version_out(get_version_for_user(request, name))


@router.post("/versions", response={201: VersionOut, **errors(409)})
def register(request, body: RegisterVersionIn, response: HttpResponse):
    """Register a checkpoint under MODELS_ROOT (or a hosted engine) as a staged version; a worker validates it.

    A checkpoint's files are hashed by the worker, not here: `content_hash` is empty until then, and
    `hash_bytes_done` / `hash_bytes_total` show the hashing's progress."""
    require_role(request.user, Role.ADMIN, "Model versions are managed by admins.")

    def make() -> tuple[int, dict]:
        try:
            version = registry.register_version(request.user, **body.model_dump())
        except ControlError as exc:
            raise ProblemError(422, str(exc), exc.errors or None) from None
        return 201, VersionOut.model_validate(version_out(version)).model_dump(mode="json")

    return idempotency.once(request, make, response)


@router.post("/versions/{name}/validate", response={202: VersionOut, **errors(409)})
def validate(request, name: SlugPath):
    """Smoke-render the version again on a worker (its result lands in `validated_at` / `validation_error`)."""
    version = get_version_for_user(request, name)
    try:
        registry.request_validation(version, request.user)
    except ControlError as exc:
        raise ProblemError(409, str(exc)) from None
    return 202, version_out(get_version_for_user(request, name))


@router.post("/versions/{name}/retire", response={200: VersionOut, **errors(409)})
def retire(request, name: SlugPath):
    """Retire a version no lane serves."""
    version = get_version_for_user(request, name)
    try:
        registry.retire_version(version, request.user)
    except ControlError as exc:
        raise ProblemError(409, str(exc)) from None
    return version_out(get_version_for_user(request, name))


@router.get("/policy", response={200: PolicyOut, **errors()}, tags=["policy"])
def get_policy(request):
    """The routing policy (lanes and intents) as YAML, with its digest."""
    require_role(request.user, Role.OPS, "Ops and admins only.")
    text = policy_file.export()
    return {"yaml": text, "digest": policy_file.digest(text)}


@router.put("/policy", response={200: PolicyApplied, **errors(409)}, tags=["policy"])
def apply_policy(request, body: PolicyIn, dry_run: bool = False):
    """Apply a whole policy atomically (admins); the file replaces the whole policy.

    The answer lists what changed. With `?dry_run=true` nothing is applied: the answer lists
    what applying would change. 422 lists every problem with its line; 409 if the policy
    changed since `based_on`."""
    require_role(request.user, Role.ADMIN, "Only admins may change the routing policy.")
    try:
        diff = policy_file.apply(body.yaml, by=request.user, based_on=body.based_on, dry_run=dry_run)
    except policy_file.PolicyConflict as exc:
        raise ProblemError(409, " ".join(exc.errors)) from None
    except policy_file.PolicyError as exc:
        raise ProblemError(
            422, "The policy was not applied.", {str(i): e for i, e in enumerate(exc.errors, 1)}
        ) from None
    return {
        "lanes": diff.lanes,
        "intents": diff.intents,
        "digest": policy_file.digest(),
        "applied": diff.applied,
        "changes": diff.as_dict(),
    }
