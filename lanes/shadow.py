"""Shadow renders: a version renders a share of a lane's real briefs before any user sees it.

While a shadow runs, `percent` of the lane's routed jobs that finish (succeeded or failed) are
submitted again on the shadow version: same prompt, expected text, seed, size, steps and guidance,
as background work through admission (deferred under load like any background work). A shadow job
belongs to whoever started the shadow and to no team, is linked to the production job it copies
(`Job.shadow_of`), is never routed (canary and experiment figures leave it out), and is hidden from
job lists, the review queue, webhooks and the creative's pushes. Its image is verified like any
other, so flag rate and edit distance can be compared. The comparison and the gate are the
experiments app's (paired statistics); `gate` asks it through the `shadow_gate` signal.
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .actions import BriefRejected, cancel_job, submit_brief
from .changes import ControlError, locked_lane, record_change
from .models import Job, Lane, ModelVersion, Priority, Shadow
from .registry import check_hash
from .signals import shadow_gate

log = logging.getLogger(__name__)

# The sampling draw. Module-level so a test can seed it.
rng = random.Random()


class ShadowError(ControlError):
    """A shadow that cannot be started or stopped as asked; nothing was changed."""


def running(lane: Lane) -> Shadow | None:
    return Shadow.objects.running().filter(lane=lane).select_related("version", "started_by").first()


def _check_can_shadow(lane: Lane, version: ModelVersion) -> None:
    if version.pk == lane.active_version_id:
        raise ShadowError(f"{version.name} already serves lane {lane.name}: shadow another version.")
    if not version.spec.text2img:
        raise ShadowError(f"{version.name} ({version.spec.label}) cannot render from a prompt.")
    if not version.is_deployable:
        raise ShadowError(f"{version.name} cannot shadow a lane: it is {version.get_status_display().lower()}.")
    probe = copy.copy(lane)  # the lane as it would be with the version serving beside its active one
    probe.canary_version = version
    try:
        probe.clean()
    except ValidationError as exc:
        problems = " ".join(message for messages in exc.message_dict.values() for message in messages)
        raise ShadowError(f"Lane {lane.name} cannot serve {version.name}: {problems}") from None


def start(lane: Lane, version: ModelVersion, percent: int, by, expected_revision: int | None = None) -> Shadow:
    """Start `version` shadowing `percent` (1-100) of the lane's routed briefs; audited as a lane change."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
        raise ShadowError(
            "A shadow takes between 1 and 100 percent of the lane's briefs.", {"percent": "Between 1 and 100."}
        )
    version = ModelVersion.objects.get(pk=version.pk)
    _check_can_shadow(lane, version)
    if not version.is_hosted:
        # Files changed since registration: its renders would not be the version's. Hashed before the lock.
        problem = check_hash(version)
        if problem:
            raise ShadowError(f"{version.name} cannot shadow a lane: {problem}")
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        current = running(lane)
        if current is not None:
            raise ShadowError(
                f"Lane {lane.name} is already shadowed by {current.version.name} (since "
                f"{current.started_at:%Y-%m-%d %H:%M:%S}): stop it first."
            )
        _check_can_shadow(lane, version)  # against the locked lane (its active version may have changed)
        shadow = Shadow.objects.create(lane=lane, version=version, percent=percent, started_by=by)
        record_change(
            lane, [], by, "shadow.start", version=version, after={"version": version.name, "percent": percent}
        )
    return shadow


def stop(lane: Lane, by, expected_revision: int | None = None, *, reason: str = "") -> Shadow:
    """Stop the lane's shadow and cancel its shadow jobs not started yet (running ones finish and still pair)."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        shadow = Shadow.objects.running().select_for_update().filter(lane=lane).select_related("version").first()
        if shadow is None:
            raise ShadowError(f"Lane {lane.name} has no shadow running.")
        shadow.stopped_at = timezone.now()
        shadow.stopped_reason = (reason or "stopped")[:300]
        shadow.save(update_fields=["stopped_at", "stopped_reason"])
        waiting = Job.objects.filter(shadow_run=shadow, state__in=Job.CANCELLABLE)
        cancelled = sum(1 for job in waiting if cancel_job(job))
        record_change(
            lane, [], by, "shadow.stop", version=shadow.version,
            before={"version": shadow.version.name, "percent": shadow.percent},
            after={"jobs_cancelled": cancelled}, note=shadow.stopped_reason,
        )  # fmt: skip
    return shadow


def _skip(shadow: Shadow, why: str) -> None:
    log.info("shadow %s skipped a brief: %s", shadow.pk, why)
    Shadow.objects.filter(pk=shadow.pk).update(skipped=F("skipped") + 1, last_skip=why[:300])


def sample(job: Job) -> Job | None:
    """A finished production job of a shadowed lane: drawn at the shadow's share, it is submitted again on
    the shadow version. Returns the shadow job (None when not drawn, or when nothing may be shadowed)."""
    if not job.routed or job.shadow_of_id is not None or job.state not in (Job.State.SUCCEEDED, Job.State.FAILED):
        return None
    try:  # after every job: `get`, not `.first()` and its ORDER BY (one shadow at most runs per lane)
        shadow = Shadow.objects.running().select_related("version", "started_by").get(lane_id=job.lane_id)
    except Shadow.DoesNotExist:
        return None
    if shadow.version_id == job.model_version_id:
        return None
    if rng.random() * 100 >= shadow.percent:
        return None
    version, lane = shadow.version, Lane.objects.select_related("active_version").get(pk=job.lane_id)
    if not version.is_deployable:  # failed validation or retired since it started: the shadow ends
        try:
            stop(lane, None, reason=f"{version.name} is {version.get_status_display().lower()}")
        except ShadowError:  # stopped meanwhile
            pass
        return None
    if not lane.enabled:
        _skip(shadow, f"job {job.pk}: lane {lane.name} is not enabled")
        return None
    try:
        with transaction.atomic():
            copied = submit_brief(
                shadow.started_by, prompt=job.prompt, expected_text=job.expected_text, intent=job.intent,
                seed=job.seed, steps=job.steps, guidance=job.guidance, width=job.width, height=job.height,
                priority=Priority.BACKGROUND, lane=lane, model_version=version,
                adapters=[entry["name"] for entry in job.adapters],
            )  # fmt: skip
            # Set on the instance too: its dispatch and push run after commit with this object.
            copied.shadow_of, copied.shadow_run, copied.team_id = job, shadow, None
            copied.save(update_fields=["shadow_of", "shadow_run", "team"])
    except BriefRejected as exc:
        _skip(shadow, f"job {job.pk}: {exc}")
        return None
    except IntegrityError:  # shadowed already (the finish announced twice)
        return None
    if copied.state == Job.State.REJECTED:
        _skip(shadow, f"job {job.pk}: {copied.admission_reason}")
    return copied


def on_job_finished(sender, job: Job, **kwargs) -> None:
    sample(job)


def gate(lane: Lane, version: ModelVersion) -> tuple[bool, str]:
    """Whether the version's latest shadow on the lane passes: enough pairs, each metric within the lane's
    canary thresholds. Judged by the experiments app (its paired statistics), through `shadow_gate`."""
    answers: list[tuple[Any, Any]] = list(shadow_gate.send(sender=Shadow, lane=lane, version=version))
    for _receiver, verdict in answers:
        if verdict is not None:
            passed, why = verdict
            return bool(passed), str(why)
    return False, "no shadow comparison is installed (the experiments app judges shadows)"
