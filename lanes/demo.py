"""The default lanes and routes of a fresh install, pointed at the demo checkpoint."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .checkpoints import build_demo_checkpoint, build_demo_upscaler
from .models import Lane, ModelVersion, Priority, Route, hash_checkpoint
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
DEMO_ROUTES = [
    ("draft", "Fast draft", "fast-draft", Priority.STANDARD),
    ("final", "Final render", "final-render", Priority.CRITICAL),
    ("preview", "Preview", "preview", Priority.BACKGROUND),
    ("fallback", "Fallback", "fallback", Priority.STANDARD),
    ("hires", "High-res (draft, then x2 upscale)", "hires", Priority.STANDARD),
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
