"""Ops controls on lanes and workers: enable, drain, disable, limits, queues, reloads.

Each lane change is made under the lane's row lock, against the revision the user saw
(see lanes.changes), and audited in the same transaction. Worker controls go over
Celery's remote control (add_consumer / cancel_consumer / a reload command) and are
audited with the workers' replies.
"""

from __future__ import annotations

from celery import current_app as app
from django.core.exceptions import ValidationError
from django.db import transaction

from .admission import NoLaneAvailable, enabled_lane
from .changes import ControlError, describe_errors, locked_lane, record_change
from .dispatch import dispatch_after_commit
from .models import AuditEvent, Job, Lane, Route, Worker
from .router import rerouted_fields

MODES = ("enabled", "draining", "disabled")

# The limits ops may change from the console (admission thresholds, concurrency, canary guards).
OPS_FIELDS = (
    "max_concurrency",
    "defer_depth",
    "hard_cap",
    "preemptible",
    "latency_slo_ms",
    "canary_window_minutes",
    "canary_min_samples",
    "canary_max_error_rate_increase",
    "canary_max_p95_ratio",
    "canary_max_flag_rate_increase",
)


def unreachable_intents(enabled_ids: set[int]) -> list[str]:
    """Intents whose lane and whole fallback chain would all be closed with only `enabled_ids` admitting."""
    lanes = {lane.pk: lane for lane in Lane.objects.all()}
    stranded = []
    for route in Route.objects.all():
        lane_id, seen = route.lane_id, set()
        while lane_id is not None and lane_id not in seen and lane_id not in enabled_ids:
            seen.add(lane_id)
            lane_id = lanes[lane_id].fallback_id
        if lane_id is None or lane_id not in enabled_ids:
            stranded.append(route.intent)
    return sorted(stranded)


def set_mode(lane: Lane, mode: str, by, expected_revision: int | None = None) -> tuple[Lane, int]:
    """Enable, drain or disable a lane. Returns the lane and how many waiting jobs moved to its fallback.

    Draining and disabled lanes admit nothing (briefs go down the fallback chain). A draining
    lane still runs what it has queued and deferred; disabling moves that waiting work to the
    first enabled lane down the chain (jobs already running finish where they are).
    """
    if mode not in MODES:
        raise ControlError(f"Unknown lane mode {mode!r}; pick one of {', '.join(MODES)}.")
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        if lane.mode == mode:
            raise ControlError(f"Lane {lane.name} is already {mode}.")
        if mode != "enabled":
            others = set(Lane.objects.filter(enabled=True).exclude(pk=lane.pk).values_list("pk", flat=True))
            stranded = unreachable_intents(others)
            if stranded:
                raise ControlError(
                    f"Closing lane {lane.name} would leave intent {', '.join(stranded)} with no enabled lane: "
                    "enable a fallback first."
                )
        before = {"mode": lane.mode}
        lane.enabled, lane.draining = mode == "enabled", mode == "draining"
        moved = _move_waiting_jobs(lane) if mode == "disabled" else 0
        action = {"enabled": "lane.enable", "draining": "lane.drain", "disabled": "lane.disable"}[mode]
        record_change(
            lane, ["enabled", "draining"], by, action, before=before, after={"mode": mode, "jobs_moved": moved}
        )
    return lane, moved


def _move_waiting_jobs(lane: Lane) -> int:
    """Send a disabled lane's queued and deferred jobs to the first enabled lane down its chain."""
    try:
        target, _ = enabled_lane(lane)
    except NoLaneAvailable:
        return 0  # nowhere to go: they finish here
    moved = 0
    for job in Job.objects.filter(lane=lane, state__in=(Job.State.QUEUED, Job.State.DEFERRED)).select_for_update():
        reason = f"lane {lane.name} disabled → moved to {target.name}"
        done = Job.objects.filter(pk=job.pk, state=job.state).update(**rerouted_fields(job, target, reason))
        if done:
            moved += 1
            job.refresh_from_db()
            if job.state == Job.State.QUEUED:
                dispatch_after_commit(job)
    return moved


def update_limits(lane: Lane, values: dict, by, expected_revision: int | None = None) -> Lane:
    """Change a lane's concurrency cap, admission thresholds or canary guards (validated as a whole)."""
    unknown = set(values) - set(OPS_FIELDS)
    if unknown:
        raise ControlError(f"Not a lane limit: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        before = {field: getattr(lane, field) for field in values}
        changed = {field: value for field, value in values.items() if before[field] != value}
        if not changed:
            raise ControlError("Nothing to change: every value is what the lane has now.")
        for field, value in changed.items():
            setattr(lane, field, value)
        if lane.hard_cap < lane.defer_depth:
            raise ControlError(
                f"hard_cap: the hard cap ({lane.hard_cap}) must be at least the defer depth ({lane.defer_depth}).",
                {"hard_cap": "Must be at least the defer depth."},
            )
        try:
            lane.full_clean(validate_unique=False)
        except ValidationError as exc:
            errors = {k: " ".join(v) for k, v in exc.message_dict.items()}
            raise ControlError(describe_errors(errors), errors) from None
        record_change(lane, list(changed), by, "lane.limits", before={k: before[k] for k in changed}, after=changed)
    return lane


def set_consuming(worker: Worker, lane: Lane, consume: bool, by, timeout: float = 3.0) -> list[str]:
    """Make a running worker start or stop consuming the lane's queues, live; returns its replies."""
    if not worker.node:
        raise ControlError(f"Worker {worker.ident} has not said its Celery node name; it cannot be controlled.")
    if not Worker.objects.alive().filter(pk=worker.pk).exists():
        # A dead worker's node name may be a live one's now (a restart on the same host): never aim at it.
        raise ControlError(f"Worker {worker.ident} is not heartbeating; start it again, then change its queues.")
    replies: list[str] = []
    for queue in lane.queues:
        if consume:
            answer = app.control.add_consumer(queue, destination=[worker.node], reply=True, timeout=timeout)
        else:
            answer = app.control.cancel_consumer(queue, destination=[worker.node], reply=True, timeout=timeout)
        if not answer:
            raise ControlError(f"Worker {worker.node} did not answer within {timeout:.0f} s; nothing recorded.")
        for reply in answer:
            for node, body in reply.items():
                replies.append(f"{node}: {body.get('ok') or body.get('error')}")
    current = set(worker.queue_list)
    current = current | set(lane.queues) if consume else current - set(lane.queues)
    before = worker.queues
    Worker.objects.filter(pk=worker.pk).update(queues=",".join(sorted(current))[:500])
    AuditEvent.record(
        by, "worker.consume" if consume else "worker.cancel-consume", lane=lane,
        before={"worker": worker.node, "queues": before}, after={"queues": ",".join(sorted(current))},
        note="; ".join(replies),
    )  # fmt: skip
    return replies


def reload_workers(by, timeout: float = 3.0) -> list[str]:
    """Every worker drops its cached pipelines once the jobs running on them finish."""
    alive = Worker.objects.alive().count()
    if not alive:
        raise ControlError("No live worker to reload.")
    # Stop waiting as soon as every live worker has answered.
    answer = app.control.broadcast("laneway_reload", reply=True, timeout=timeout, limit=alive)
    replies = [
        f"{node}: {body.get('ok') or body.get('error')}" for reply in answer or [] for node, body in reply.items()
    ]
    AuditEvent.record(by, "workers.reload", after={"replies": len(replies)}, note="; ".join(replies))
    return replies


def dismiss_notice(lane: Lane, by) -> None:
    """Clear the lane's notice for everyone (not a change of the lane's serving: no new revision)."""
    with transaction.atomic():
        lane = Lane.objects.select_for_update().get(pk=lane.pk)
        if not lane.notice:
            return
        before = {"notice": lane.notice}
        lane.notice, lane.notice_at = "", None
        lane.save(update_fields=["notice", "notice_at"])
        AuditEvent.record(by, "lane.dismiss-notice", lane=lane, before=before)
