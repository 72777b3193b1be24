"""Switching a lane between model versions: activate, canary, promote, stop, roll back.

Every job is pinned to the version it was routed to, so a switch never touches work in
flight. Each change is made through lanes.changes (row lock, revision, audit in the same
transaction). A lane's version history is kept as LaneRelease rows, which is what a
rollback goes back along.
"""

from __future__ import annotations

import random

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from telemetry import push
from webhooks import outbox

from . import adapters as lora
from .changes import ControlError, acting_user, locked_lane, record_change
from .models import AuditEvent, Job, Lane, LaneRelease, ModelVersion, Rollout

# The canary draw. Module-level so a test can seed it and route a fixed sequence.
rng = random.Random()


def pick_version(lane: Lane) -> ModelVersion:
    """The version a new job on the lane is pinned to: the canary for its share, else the active one."""
    if lane.canary_version_id and lane.canary_percent and rng.random() * 100 < lane.canary_percent:
        canary = lane.canary_version
        if canary is not None:  # always, with canary_version_id set (a missing row raises DoesNotExist)
            return canary
    return lane.active_version


def rollout_change(lane: Lane, rollout: Rollout, by, event: str, note: str = "", fields: list[str] | None = None):
    """A rollout's transition, in the caller's transaction holding the lane's lock: saved, audited as the
    lane's next revision (so a second person's change made from the same page gets 409), announced
    as the `rollout.<event>` webhook and, after commit, pushed to lane pages."""
    rollout.save(update_fields=fields)
    percent = lane.canary_percent if rollout.state == Rollout.State.RUNNING else 0
    after = {"state": rollout.state, "step": rollout.step + 1, "percent": percent, "paused": rollout.paused}
    record_change(lane, [], by, f"rollout.{event}", version=rollout.version, after=after, note=note)
    outbox.emit_fleet(
        f"rollout.{event.replace('-', '_')}",
        {"lane": lane.name, "version": rollout.version.name, "baseline": rollout.baseline.name, **after,
         "steps": len(rollout.steps), "reason": rollout.reason or note},
    )  # fmt: skip
    pushed = (lane.name, rollout.state, rollout.step, percent)
    transaction.on_commit(lambda: push.lane_rollout(*pushed), robust=True)


def end_rollout(lane: Lane, state: str, by, reason: str) -> Rollout | None:
    """End the lane's running rollout (if any) as `state`: whoever ends a canary ends its rollout."""
    running = Rollout.objects.running().filter(lane=lane).select_related("version", "baseline").first()
    if running is None:
        return None
    running.state, running.reason, running.ended_at = state, reason[:500], timezone.now()
    events: dict[str, str] = {Rollout.State.PROMOTED: "promoted", Rollout.State.ROLLED_BACK: "rolled-back"}
    event = events.get(state, "aborted")
    rollout_change(lane, running, by, event, reason, ["state", "reason", "ended_at"])
    return running


def _versions_state(lane: Lane) -> dict:
    canary = lane.canary_version  # None without a query when canary_version_id is None
    return {
        "active": lane.active_version.name,
        "canary": canary.name if canary is not None else None,
        "canary_percent": lane.canary_percent,
    }


def _check_deployable(version: ModelVersion) -> None:
    if not version.spec.text2img:
        raise ControlError(f"{version.name} cannot render from a prompt, so it cannot serve a lane.")
    if not version.is_deployable:
        # Keyed by str: `status` is the field's value, not a Status member.
        hints: dict[str, str] = {
            ModelVersion.Status.STAGED: "it has not been validated yet",
            ModelVersion.Status.VALIDATING: "its validation is still running",
            ModelVersion.Status.INVALID: "it failed validation",
            ModelVersion.Status.RETIRED: "it is retired",
        }
        hint = hints.get(version.status, version.status)
        raise ControlError(f"{version.name} cannot serve a lane: {hint}.")


def _check_fits(lane: Lane) -> None:
    """The lane with its new versions must still be a valid lane (family, refine stage, size grid)."""
    try:
        lane.clean()
    except ValidationError as exc:
        problems = " ".join(message for messages in exc.message_dict.values() for message in messages)
        raise ControlError(f"Lane {lane.name} cannot serve that: {problems}") from None


def _switch_active(lane: Lane, version: ModelVersion, by, how: str, outcome: str) -> ModelVersion:
    """Make `version` the lane's active version and close the serving release. Returns the old version."""
    old = lane.active_version
    now = timezone.now()
    serving = LaneRelease.objects.filter(lane=lane, outcome=LaneRelease.Outcome.SERVING)
    if not serving.update(ended_at=now, outcome=outcome):
        # A lane from before version history: its first version enters the history now.
        LaneRelease.objects.create(lane=lane, version=old, how="initial", started_at=now, ended_at=now, outcome=outcome)
    LaneRelease.objects.create(lane=lane, version=version, how=how, started_by=acting_user(by), started_at=now)
    lane.active_version = version
    return old


def repin_waiting(lane: Lane, removed: ModelVersion | None, serving: ModelVersion, by, why: str) -> int:
    """Jobs of the lane not started yet and pinned to `removed` move to `serving`, in the caller's
    transaction, with a note on each job and one audit row with the count. Running jobs keep theirs.

    A waiting job pinned to a version that was just stopped or rolled back would otherwise run on
    it anyway. Each move is a conditional update, so a worker claiming the job meanwhile either
    got it first (it runs as routed) or claims it afterwards and renders on `serving`.
    """
    if removed is None or removed.pk == serving.pk:
        return 0
    waiting = (Job.State.QUEUED, Job.State.DEFERRED)
    moved = 0
    # Routed jobs only: an experiment's jobs are pinned to their arm's version on purpose.
    pinned = Job.objects.filter(lane=lane, model_version=removed, state__in=waiting, routed=True)
    for job in pinned.only("pk", "adapters"):
        adapters, missing = lora.for_job(lane, serving, [entry["name"] for entry in job.adapters])
        note = f"Moved from {removed.name} to {serving.name} before it started: {why}."
        if missing:
            note += f" Without LoRA {', '.join(missing)}: not offered for {serving.name}."
        moved += Job.objects.filter(pk=job.pk, model_version=removed, state__in=waiting).update(
            model_version=serving, adapters=adapters, version_note=note[:300]
        )
    if moved:
        AuditEvent.record(
            by, "lane.repin", lane=lane, version=serving,
            before={"version": removed.name}, after={"version": serving.name, "jobs": moved},
            note=f"moved {moved} waiting job{'s' if moved != 1 else ''} from {removed.name} to {serving.name}: {why}",
        )  # fmt: skip
    return moved


def record_release(lane: Lane, by, how: str) -> None:
    """Start the lane's history (a new lane), or continue it when its active version was changed elsewhere."""
    serving = LaneRelease.objects.filter(lane=lane, outcome=LaneRelease.Outcome.SERVING).first()
    if serving is not None and serving.version_id == lane.active_version_id:
        return
    now = timezone.now()
    if serving is not None:
        LaneRelease.objects.filter(pk=serving.pk).update(ended_at=now, outcome=LaneRelease.Outcome.SUPERSEDED)
    LaneRelease.objects.create(
        lane=lane, version=lane.active_version, how=how, started_by=acting_user(by), started_at=now
    )


def _sync(*versions) -> None:
    for version in versions:
        if version is not None:
            version.refresh_from_db(fields=["status"])
            version.sync_status()


def activate(lane: Lane, version: ModelVersion, by, expected_revision: int | None = None) -> Lane:
    """Switch the lane's active version at once (new jobs only; running ones keep theirs)."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        version = ModelVersion.objects.get(pk=version.pk)
        _check_deployable(version)
        if version.pk == lane.active_version_id:
            raise ControlError(f"{version.name} is already the active version of {lane.name}.")
        before = _versions_state(lane)
        old = _switch_active(lane, version, by, "activated", LaneRelease.Outcome.SUPERSEDED)
        if lane.canary_version_id == version.pk:  # activating the canary is promoting it
            lane.clear_canary()
        end_rollout(lane, Rollout.State.ABORTED, by, f"{version.name} was activated on the lane by hand")
        _check_fits(lane)
        record_change(
            lane, ["active_version", *Lane.CANARY_FIELDS], by, "lane.activate", version=version,
            before=before, after=_versions_state(lane),
        )  # fmt: skip
        _sync(old, version)
    return lane


def start_canary(lane: Lane, version: ModelVersion, percent: int, by, expected_revision: int | None = None) -> Lane:
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        version = ModelVersion.objects.get(pk=version.pk)
        _check_deployable(version)
        if version.pk == lane.active_version_id:
            raise ControlError(f"{version.name} is already the active version of {lane.name}.")
        if not 1 <= percent <= 99:
            raise ControlError("A canary takes between 1 and 99 percent of the lane's new jobs.")
        before = _versions_state(lane)
        previous = lane.canary_version
        restart = lane.canary_version_id != version.pk
        lane.canary_version, lane.canary_percent = version, percent
        if restart:
            lane.canary_started_at = timezone.now()
        _check_fits(lane)
        record_change(
            lane, list(Lane.CANARY_FIELDS), by, "canary.start" if restart else "canary.percent", version=version,
            before=before, after=_versions_state(lane),
        )  # fmt: skip
        _sync(previous, version)
    return lane


def promote(
    lane: Lane, by, expected_revision: int | None = None, *, reason: str = "the canary was promoted by hand"
) -> Lane:
    """The canary becomes the active version for every new job (ending its rollout, if any, for `reason`)."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        canary = lane.canary_version
        if canary is None:
            raise ControlError(f"Lane {lane.name} has no canary to promote.")
        _check_deployable(canary)
        before = _versions_state(lane)
        old = _switch_active(lane, canary, by, "promoted from canary", LaneRelease.Outcome.SUPERSEDED)
        end_rollout(lane, Rollout.State.PROMOTED, by, reason)
        record_change(
            lane, ["active_version", *lane.clear_canary()], by, "canary.promote", version=canary,
            before=before, after=_versions_state(lane),
        )  # fmt: skip
        _sync(old, canary)
    return lane


def end_canary(
    lane: Lane, by, expected_revision: int | None = None, *, reason: str = "", automatic=False,
    rollout_state: str | None = None,
) -> Lane:  # fmt: skip
    """Stop the canary: every new job goes to the active version again. A rollout of it ends as
    `rollout_state` (by default rolled back when automatic, else aborted)."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        canary = lane.canary_version
        if canary is None:
            raise ControlError(f"Lane {lane.name} has no canary.")
        before = _versions_state(lane)
        fields = lane.clear_canary()
        if automatic:
            lane.notice = f"Canary {canary.name} rolled back automatically: {reason}"[:500]
            lane.notice_at = timezone.now()
            fields += ["notice", "notice_at"]
        record_change(
            lane, fields, by, "canary.auto-rollback" if automatic else "canary.abort", version=canary,
            before=before, after=_versions_state(lane), note=reason,
        )  # fmt: skip
        why = f"the canary was rolled back automatically ({reason})" if automatic else "the canary was stopped"
        repin_waiting(lane, canary, lane.active_version, by, why)
        ended = rollout_state or (Rollout.State.ROLLED_BACK if automatic else Rollout.State.ABORTED)
        end_rollout(lane, ended, by, reason or why)
        if automatic:
            outbox.emit_fleet("canary.rolled_back", {"lane": lane.name, "canary": canary.name, "reason": reason})
        _sync(canary)
    return lane


def quarantine(version: ModelVersion, reason: str) -> list[str]:
    """A version whose files would not load on a worker: it fails validation at once, and every canary
    of it stops, ending its rollout as rolled back (its waiting jobs move to the active versions).
    Returns the lanes whose canary stopped."""
    marked = ModelVersion.objects.filter(pk=version.pk, status__in=ModelVersion.DEPLOYABLE).update(
        status=ModelVersion.Status.INVALID, validation_error=reason[:2000]
    )
    if marked:
        AuditEvent.record(None, "version.load-failed", version=version, note=reason[:500])
    stopped = []
    for lane in Lane.objects.filter(canary_version=version):
        try:
            end_canary(lane, None, reason=reason, automatic=True, rollout_state=Rollout.State.ABORTED)
        except ControlError:  # stopped meanwhile (another worker saw the same failure)
            continue
        stopped.append(lane.name)
    return stopped


def rollback_target(lane: Lane) -> ModelVersion | None:
    """The version served before the current one, skipping versions rolled back from and unusable ones."""
    rolled_back = LaneRelease.objects.filter(lane=lane, outcome=LaneRelease.Outcome.ROLLED_BACK).values("version")
    earlier = (
        LaneRelease.objects.filter(lane=lane)
        .exclude(outcome=LaneRelease.Outcome.SERVING)
        .exclude(version_id=lane.active_version_id)
        .exclude(version__in=rolled_back)
        .filter(version__status__in=ModelVersion.DEPLOYABLE)
        .select_related("version")
        .order_by("-started_at", "-id")
        .first()
    )
    return earlier.version if earlier else None


def rollback(lane: Lane, by, expected_revision: int | None = None) -> Lane:
    """One-click rollback: the previous active version serves new jobs at once; a canary is stopped too."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        target = rollback_target(lane)
        if target is None:
            raise ControlError(f"Lane {lane.name} has no previous version to roll back to.")
        before = _versions_state(lane)
        canary = lane.canary_version
        old = _switch_active(lane, target, by, f"rollback from {lane.active_version.name}", "rolled_back")
        record_change(
            lane, ["active_version", *lane.clear_canary()], by, "lane.rollback", version=target,
            before=before, after=_versions_state(lane),
        )  # fmt: skip
        why = f"lane {lane.name} was rolled back"
        repin_waiting(lane, old, target, by, why)
        repin_waiting(lane, canary, target, by, why)
        end_rollout(lane, Rollout.State.ABORTED, by, why)
        outbox.emit_fleet("canary.rolled_back", {"lane": lane.name, "from": old.name, "to": target.name})
        _sync(old, target, canary)
    return lane
