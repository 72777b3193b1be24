"""Lanes' models, one module per concern; imported from here (`from lanes.models import Job`)."""

from .audit import AuditEvent
from .fleet import (
    CheckpointError,
    Lane,
    LaneRelease,
    ModelVersion,
    Priority,
    Route,
    hash_checkpoint,
    resolve_checkpoint,
)
from .jobs import Artifact, Job, Worker, with_live_counts
from .review import Verification

__all__ = [
    "Artifact",
    "AuditEvent",
    "CheckpointError",
    "Job",
    "Lane",
    "LaneRelease",
    "ModelVersion",
    "Priority",
    "Route",
    "Verification",
    "Worker",
    "hash_checkpoint",
    "resolve_checkpoint",
    "with_live_counts",
]
