"""A job's images on disk (under MEDIA_ROOT) and their rows. Writing one does nothing else."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from PIL.Image import Image

from .models import Artifact, Job


@dataclass(frozen=True)
class Written:
    """A PNG on disk that no row points at yet."""

    relative: str
    sha256: str
    size_bytes: int
    width: int
    height: int

    def discard(self) -> None:
        (Path(settings.MEDIA_ROOT) / self.relative).unlink(missing_ok=True)


def write_png(job: Job, image: Image, stage: str) -> Written:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    # One file per attempt: a run that lost its claim deletes only its own file.
    relative = f"artifacts/{job.pk}/{stage}-{job.attempts}.png"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return Written(relative, hashlib.sha256(data).hexdigest(), len(data), image.width, image.height)


def record(job: Job, stage: str, written: Written) -> Artifact:
    return Artifact.objects.create(
        job=job, stage=stage, path=written.relative, width=written.width, height=written.height,
        sha256=written.sha256, size_bytes=written.size_bytes,
    )  # fmt: skip


def store_png(job: Job, image: Image, stage: str) -> Artifact:
    return record(job, stage, write_png(job, image, stage))
