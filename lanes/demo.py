"""The default lanes and routes of a fresh install, pointed at the demo checkpoints.

One tiny random-weight checkpoint per family (SD 1.x, SDXL with its refiner, SD3, Flux),
each on lanes that suit it, plus a hosted-engine lane served by the local stand-in image
API (`manage.py serve_images_api`, started by `make run`), so the whole mixed stack can be
tried at once.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .checkpoints import build_demo_checkpoint, build_demo_upscaler
from .models import Lane, ModelVersion, Priority, Route, endpoint_hash, hash_checkpoint
from .rollout import record_release

DEMO_CHECKPOINT = "demo-tiny-sd"
DEMO_VERSION = "demo-tiny-sd-v1"
DEMO_UPSCALER_CHECKPOINT = "demo-tiny-sd-x2-upscaler"
DEMO_UPSCALER_VERSION = "demo-tiny-sd-x2-upscaler-v1"
# A second checkpoint (other random weights) to try canaries and rollbacks on.
DEMO_CHECKPOINT_V2 = "demo-tiny-sd-v2"
DEMO_VERSION_V2 = "demo-tiny-sd-v2"

# Sized for the tiny demo checkpoint on a CPU; real lanes are edited in the console.
DEMO_LANES = [
    dict(
        name="fast-draft",
        description="Fast drafts",
        default_steps=4,
        max_steps=12,
        default_width=64,
        default_height=64,
        max_size=256,
        max_concurrency=2,
        latency_slo_ms=1200,
    ),
    dict(
        name="final-render",
        description="Final renders",
        default_steps=8,
        max_steps=50,
        default_width=128,
        default_height=128,
        max_size=512,
        max_concurrency=1,
        latency_slo_ms=5000,
    ),
    dict(
        name="preview",
        description="Thumbnails and previews",
        default_steps=2,
        max_steps=8,
        default_width=32,
        default_height=32,
        max_size=128,
        max_concurrency=2,
        latency_slo_ms=800,
    ),
    dict(
        name="fallback",
        description="Cheap fallback",
        default_steps=2,
        max_steps=8,
        default_width=64,
        default_height=64,
        max_size=256,
        max_concurrency=2,
        latency_slo_ms=1500,
    ),
    dict(
        name="hires",
        description="Draft, then a batched latent x2 upscale",
        default_steps=4,
        max_steps=20,
        default_width=128,
        default_height=128,
        min_size=64,
        max_size=512,
        max_concurrency=2,
        latency_slo_ms=3000,
        cascade=True,
        refine_scale=2,
        refine_steps=4,
        refine_batch_size=4,
        refine_max_wait_ms=50,
    ),
]
DEMO_FALLBACKS = {
    "fast-draft": "fallback",
    "final-render": "fast-draft",
    "preview": "fallback",
    "hires": "final-render",
}
# The other families' demo checkpoints: (family, folder under MODELS_ROOT, version name).
FAMILY_DEMOS = [
    ("sdxl", "demo-tiny-sdxl", "demo-tiny-sdxl-v1"),
    ("sdxl-refiner", "demo-tiny-sdxl-refiner", "demo-tiny-sdxl-refiner-v1"),
    ("sd3", "demo-tiny-sd3", "demo-tiny-sd3-v1"),
    ("flux", "demo-tiny-flux", "demo-tiny-flux-v1"),
]
DEMO_HOSTED_VERSION = "demo-hosted-images-api"
DEMO_HOSTED_MODEL = "laneway-poster-1"
TINY = dict(default_width=64, default_height=64, min_size=32, max_size=256, max_concurrency=2)
# Lane name → (version name, lane fields).
FAMILY_LANES = {
    "sdxl": ("demo-tiny-sdxl-v1", dict(description="SDXL renders", default_steps=4, default_guidance=5.0, **TINY)),
    "sdxl-hires": (
        "demo-tiny-sdxl-v1",
        dict(
            description="SDXL draft, then a batched SDXL refiner pass at x2",
            default_steps=4,
            default_guidance=5.0,
            cascade=True,
            refine_scale=2,
            refine_steps=4,
            refine_strength=0.3,
            refine_batch_size=4,
            **{**TINY, "default_width": 128, "default_height": 128, "min_size": 64, "max_size": 512},
        ),
    ),
    "sd3": ("demo-tiny-sd3-v1", dict(description="SD3 renders", default_steps=4, default_guidance=7.0, **TINY)),
    "flux": ("demo-tiny-flux-v1", dict(description="Flux renders", default_steps=4, default_guidance=3.5, **TINY)),
    "hosted": (
        DEMO_HOSTED_VERSION,
        dict(
            description="A hosted engine (OpenAI Images API)",
            default_steps=1,
            max_steps=1,
            default_guidance=0.0,
            default_width=256,
            default_height=256,
            min_size=64,
            max_size=1024,
            max_concurrency=4,
            latency_slo_ms=3000,
        ),
    ),
}
FAMILY_REFINERS = {"sdxl-hires": "demo-tiny-sdxl-refiner-v1"}

DEMO_ROUTES = [
    ("draft", "Fast draft", "fast-draft", Priority.STANDARD),
    ("final", "Final render", "final-render", Priority.CRITICAL),
    ("preview", "Preview", "preview", Priority.BACKGROUND),
    ("fallback", "Fallback", "fallback", Priority.STANDARD),
    ("hires", "High-res (draft, then x2 upscale)", "hires", Priority.STANDARD),
    ("sdxl", "SDXL render", "sdxl", Priority.STANDARD),
    ("sdxl-hires", "SDXL high-res (draft, then the SDXL refiner)", "sdxl-hires", Priority.STANDARD),
    ("sd3", "SD3 render", "sd3", Priority.STANDARD),
    ("flux", "Flux render", "flux", Priority.STANDARD),
    ("hosted", "Hosted engine", "hosted", Priority.STANDARD),
]


def ensure_demo_checkpoint() -> Path:
    path = Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT
    if not (path / "model_index.json").exists():
        build_demo_checkpoint(path)
    return path


def ensure_demo_upscaler() -> Path:
    base = ensure_demo_checkpoint()
    path = Path(settings.MODELS_ROOT) / DEMO_UPSCALER_CHECKPOINT
    if not (path / "model_index.json").exists():
        build_demo_upscaler(path, base)
    return path


def ensure_demo_checkpoint_v2() -> Path:
    path = Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT_V2
    if not (path / "model_index.json").exists():
        build_demo_checkpoint(path, seed=1)
    return path


def ensure_family_checkpoint(family: str, folder: str) -> Path:
    path = Path(settings.MODELS_ROOT) / folder
    if not (path / "model_index.json").exists():
        build_demo_checkpoint(path, family=family)
    return path


def seed_family_versions(registered_by=None) -> dict[str, ModelVersion]:
    """One active demo version per family (built if missing), and the hosted demo engine."""
    versions = {}
    for family, folder, name in FAMILY_DEMOS:
        path = ensure_family_checkpoint(family, folder)
        versions[name], _ = ModelVersion.objects.get_or_create(
            name=name,
            defaults=dict(
                family=family,
                location=folder,
                content_hash=hash_checkpoint(path),
                status=ModelVersion.Status.ACTIVE,
                registered_by=registered_by,
                validated_at=timezone.now(),
            ),
        )
    versions[DEMO_HOSTED_VERSION], _ = ModelVersion.objects.get_or_create(
        name=DEMO_HOSTED_VERSION,
        defaults=dict(
            family=ModelVersion.Family.HTTP,
            base_url=settings.DEMO_IMAGES_API_URL,
            remote_model=DEMO_HOSTED_MODEL,
            api_key_env="LANEWAY_DEMO_API_KEY",
            timeout_seconds=30.0,
            max_concurrency=4,
            price_per_image=0.04,
            content_hash=endpoint_hash(settings.DEMO_IMAGES_API_URL, DEMO_HOSTED_MODEL),
            status=ModelVersion.Status.ACTIVE,
            registered_by=registered_by,
            validated_at=timezone.now(),
        ),
    )
    return versions


def seed_demo_lanes(registered_by=None) -> ModelVersion:
    """Register the demo version and create the default lanes and routes; existing rows are kept."""
    path = ensure_demo_checkpoint()
    upscaler_path = ensure_demo_upscaler()
    with transaction.atomic():
        upscaler, _ = ModelVersion.objects.get_or_create(
            name=DEMO_UPSCALER_VERSION,
            defaults=dict(
                family=ModelVersion.Family.LATENT_UPSCALER_X2,
                location=DEMO_UPSCALER_CHECKPOINT,
                content_hash=hash_checkpoint(upscaler_path),
                status=ModelVersion.Status.ACTIVE,
                registered_by=registered_by,
                validated_at=timezone.now(),
            ),
        )
        version, _ = ModelVersion.objects.get_or_create(
            name=DEMO_VERSION,
            defaults=dict(
                location=DEMO_CHECKPOINT,
                content_hash=hash_checkpoint(path),
                status=ModelVersion.Status.ACTIVE,
                registered_by=registered_by,
                validated_at=timezone.now(),
            ),
        )
        lanes = {}
        for spec in DEMO_LANES:
            extra = {"refine_version": upscaler} if spec.get("cascade") else {}
            lanes[spec["name"]], _ = Lane.objects.get_or_create(
                name=spec["name"], defaults={**spec, "active_version": version, **extra}
            )
            record_release(lanes[spec["name"]], registered_by, "seeded")
        family_versions = seed_family_versions(registered_by)
        for name, (version_name, spec) in FAMILY_LANES.items():
            refiner = FAMILY_REFINERS.get(name)
            lanes[name], _ = Lane.objects.get_or_create(
                name=name,
                defaults={
                    **spec,
                    "active_version": family_versions[version_name],
                    "refine_version": family_versions[refiner] if refiner else None,
                    "fallback": lanes["fallback"] if name != "hosted" else lanes["final-render"],
                },
            )
            record_release(lanes[name], registered_by, "seeded")
        for name, fallback in DEMO_FALLBACKS.items():
            lane = lanes[name]
            if lane.fallback_id is None:
                lane.fallback = lanes[fallback]
                lane.save(update_fields=["fallback"])
        for intent, label, lane_name, priority in DEMO_ROUTES:
            Route.objects.get_or_create(
                intent=intent, defaults=dict(label=label, lane=lanes[lane_name], priority=priority)
            )
    return version


def seed_demo_v2(registered_by=None) -> ModelVersion:
    """Register the second demo checkpoint as a staged version (validated like any other)."""
    path = ensure_demo_checkpoint_v2()
    version, _ = ModelVersion.objects.get_or_create(
        name=DEMO_VERSION_V2,
        defaults=dict(location=DEMO_CHECKPOINT_V2, content_hash=hash_checkpoint(path), registered_by=registered_by),
    )
    return version
