"""Celery entry points of lanes: each hands its work (by id) to the module that does it.

Senders (lanes.dispatch, beat) name these tasks; code never calls them directly.
"""

from __future__ import annotations

from celery import shared_task

from . import canary, dispatch, lifecycle, progressive, registry, retention, review
from .heartbeat import worker_ident


@shared_task(name="lanes.tasks.run_job", acks_late=True, ignore_result=True, bind=True)
def run_job(self, job_id: int) -> str:
    return lifecycle.run(job_id, delivered_to=(self.request.delivery_info or {}).get("routing_key"))


@shared_task(name="lanes.tasks.refine_job", acks_late=True, ignore_result=True)
def refine_job(job_id: int) -> str:
    return lifecycle.refine(job_id)


@shared_task(name="lanes.tasks.verify_artifact", acks_late=True, ignore_result=True)
def verify_artifact(verification_id: int) -> str:
    """On the CPU verify queue."""
    return review.verify(verification_id)


# Named as before it moved here: a validation queued by the previous release still runs.
@shared_task(name="lanes.rollout.validate_version", acks_late=True, ignore_result=True)
def validate_version(version_id: int) -> str:
    return registry.validate(version_id, worker_ident())


@shared_task(name="lanes.tasks.validate_adapter", acks_late=True, ignore_result=True)
def validate_adapter(adapter_id: int) -> str:
    return registry.validate_adapter(adapter_id)


@shared_task(name="lanes.tasks.release_deferred_jobs", ignore_result=True)
def release_deferred_jobs() -> int:
    """Beat: release deferred work, oldest first, on every lane with room."""
    return dispatch.release_all_deferred()


@shared_task(name="lanes.tasks.reconcile_jobs", ignore_result=True)
def reconcile_jobs() -> dict[str, int]:
    """Beat: requeue jobs whose worker is gone, and re-send queued jobs nobody picked up."""
    return dispatch.reconcile()


@shared_task(name="lanes.tasks.check_canaries", ignore_result=True)
def check_canaries() -> dict[str, str]:
    """Beat: roll back every canary that is worse than its baseline past the lane's thresholds."""
    return canary.check_canaries()


@shared_task(name="lanes.tasks.check_rollouts", ignore_result=True)
def check_rollouts() -> dict[str, str]:
    """Beat, on the canary check's schedule: advance, roll back or hold each progressive rollout's step."""
    return progressive.check_rollouts()


@shared_task(name="lanes.tasks.prune_artifacts", ignore_result=True)
def prune_artifacts() -> dict[str, int]:
    """Beat: delete images past ARTIFACT_RETENTION_DAYS (none when it is 0), keeping the rows."""
    pruned = retention.prune()
    return {"artifacts": pruned.artifacts, "jobs": pruned.jobs, "bytes": pruned.bytes}
