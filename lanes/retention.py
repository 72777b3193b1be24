"""Artifact retention: images older than ARTIFACT_RETENTION_DAYS are deleted from MEDIA_ROOT, except
those something still needs: a review's (flagged, decided, or still being checked), an experiment's
(or any other feature's, through the retention_holds signal) and a version's smoke image.

The rows stay, marked pruned, so the console and the API say the image is gone instead of missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from .models import Artifact, Job, ModelVersion, Verification
from .signals import retention_holds

log = logging.getLogger(__name__)

# Rows marked per transaction: short write locks on SQLite, where the web server and workers also write.
BATCH = 500


@dataclass
class Pruned:
    artifacts: int = 0
    jobs: int = 0
    bytes: int = 0


def prunable(days: int, now: datetime | None = None) -> QuerySet[Artifact]:
    """Artifacts of finished jobs older than `days` whose files may be deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=days)
    Status = Verification.Status
    # A job under review keeps its images: a flagged one awaits a human, a decided one is the record
    # of that decision, and one still being checked may yet be flagged.
    reviewed = Verification.objects.filter(
        Q(status__in=(Status.PENDING, Status.RUNNING, Status.FLAGGED)) | ~Q(decision="")
    ).values("job_id")
    smoke_images = ModelVersion.objects.exclude(smoke_image="").values("smoke_image")
    artifacts = (
        Artifact.objects.filter(created_at__lt=cutoff, pruned_at__isnull=True, job__state__in=Job.TERMINAL)
        .exclude(job_id__in=reviewed)
        .exclude(path__in=smoke_images)
    )
    for _receiver, held in retention_holds.send(sender=Artifact):
        artifacts = artifacts.exclude(job_id__in=held)
    return artifacts


def prune(days: int | None = None, *, dry_run: bool = False) -> Pruned:
    """Delete the files of prunable artifacts, a batch of rows per transaction, each file after its
    batch commits; `days` defaults to ARTIFACT_RETENTION_DAYS, and 0 keeps everything."""
    days = settings.ARTIFACT_RETENTION_DAYS if days is None else days
    if days <= 0:
        return Pruned()
    now = timezone.now()
    if dry_run:
        totals = prunable(days, now).aggregate(
            artifacts=Count("id"), jobs=Count("job_id", distinct=True), bytes=Sum("size_bytes")
        )
        return Pruned(totals["artifacts"], totals["jobs"], totals["bytes"] or 0)
    pruned, jobs = Pruned(), set[int]()
    while True:
        with transaction.atomic():
            ids = list(prunable(days, now).order_by("id").values_list("id", flat=True)[:BATCH])
            if not ids:
                break
            # Marked through the same filter: a row another run pruned, or a job put under review since
            # the ids were read, is left alone. The files are those of the rows this transaction marked.
            prunable(days, now).filter(id__in=ids).update(pruned_at=now)
            marked = list(
                Artifact.objects.filter(id__in=ids, pruned_at=now).values_list("job_id", "path", "size_bytes")
            )
            paths = [path for _, path, _ in marked]
            transaction.on_commit(partial(delete_files, paths))
        pruned.artifacts += len(marked)
        pruned.bytes += sum(size for _, _, size in marked)
        jobs.update(job_id for job_id, _, _ in marked)
    pruned.jobs = len(jobs)
    if pruned.artifacts:
        log.info(
            "Pruned %d images of %d jobs older than %d days (%d bytes)",
            pruned.artifacts,
            pruned.jobs,
            days,
            pruned.bytes,
        )
    return pruned


def delete_files(paths: list[str]) -> None:
    media = Path(settings.MEDIA_ROOT).resolve()
    for relative in paths:
        target = (media / relative).resolve()
        if not target.is_relative_to(media):
            log.warning("Not deleting %s: outside MEDIA_ROOT", relative)
            continue
        target.unlink(missing_ok=True)
        if target.parent != media:
            try:
                target.parent.rmdir()  # the job's folder, once its last image is gone
            except OSError:
                pass  # not empty
