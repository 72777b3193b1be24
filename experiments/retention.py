"""Experiments keep their images past the artifact retention: results compare them side by side."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import ExperimentCell


def held_jobs(**kwargs) -> QuerySet:
    """A lanes.signals.retention_holds receiver: every job an experiment cell rendered."""
    return ExperimentCell.objects.filter(job__isnull=False).values("job_id")
