"""Lanes' models, one module per concern; imported from here (`from lanes.models import Job`)."""

from .audit import AuditEvent
from .fleet import (
    HASH_CHUNK_BYTES,
    Adapter,
    CheckpointError,
    Lane,
    LaneAdapter,
    LaneRelease,
    ModelVersion,
    Priority,
    Route,
    endpoint_hash,
    files_stamp,
    hash_checkpoint,
    refine_partners,
    resolve_adapter,
    resolve_checkpoint,
    tensor_shapes,
)
from .jobs import Artifact, Job, Worker, with_consumers, with_live_counts
from .review import Verification
from .rollouts import THRESHOLDS, Rollout, RolloutPlan, describe_steps
from .shadow import Shadow
from .teams import LaneWindow, TeamQuota

__all__ = [
    "HASH_CHUNK_BYTES",
    "THRESHOLDS",
    "Adapter",
    "Artifact",
    "AuditEvent",
    "CheckpointError",
    "Job",
    "Lane",
    "LaneAdapter",
    "LaneRelease",
    "LaneWindow",
    "ModelVersion",
    "Priority",
    "Rollout",
    "RolloutPlan",
    "Route",
    "Shadow",
    "describe_steps",
    "TeamQuota",
    "endpoint_hash",
    "files_stamp",
    "Verification",
    "Worker",
    "hash_checkpoint",
    "refine_partners",
    "resolve_adapter",
    "resolve_checkpoint",
    "tensor_shapes",
    "with_consumers",
    "with_live_counts",
]
