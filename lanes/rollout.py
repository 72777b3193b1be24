"""Model versions from registration to retirement, and how lanes switch between them.

A version is registered (staged, its content hash recorded), validated by a smoke render
on a worker, then may serve a lane: as its active version, or as a canary taking a share
of new jobs. Every job is pinned to the version it was routed to, so a switch never
touches work in flight. Each change is made under a row lock, against the revision of
the lane the user saw, and is written to the audit log in the same transaction.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .metrics import nearest_rank
from .models import (
    AuditEvent,
    CheckpointError,
    Job,
    Lane,
    LaneRelease,
    ModelVersion,
    Verification,
    hash_checkpoint,
    resolve_checkpoint,
)

SMOKE_PROMPT = "Laneway smoke test: a red square on a white background"
SMOKE_SEED = 1234
SMOKE_SIZE = 64
SMOKE_STEPS = 2

# The canary draw. Module-level so a test can seed it and route a fixed sequence.
rng = random.Random()


class ControlError(Exception):
    """A control action that cannot be applied; nothing was changed. `errors` maps form fields to messages."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class ConflictError(ControlError):
    """The lane changed since the user loaded it."""


# Selection


def pick_version(lane: Lane) -> ModelVersion:
    """The version a new job on the lane is pinned to: the canary for its share, else the active one."""
    if lane.canary_version_id and lane.canary_percent and rng.random() * 100 < lane.canary_percent:
        return lane.canary_version
    return lane.active_version


# Registration and validation


def register_version(
    by, *, name: str, location: str, family: str = ModelVersion.Family.STABLE_DIFFUSION,
    config_location: str = "", dtype: str = ModelVersion.DType.FLOAT32, validate: bool = True,
) -> ModelVersion:  # fmt: skip
    """Record a checkpoint under MODELS_ROOT as a staged version and queue its validation.

    Raises ControlError with per-field `errors` for bad input; stores nothing then.
    """
    errors: dict[str, str] = {}
    name = (name or "").strip()
    try:
        validate_slug(name)
    except ValidationError:
        errors["name"] = "Use letters, digits, hyphens and underscores only."
    if name and ModelVersion.objects.filter(name=name).exists():
        errors["name"] = f"A version named {name!r} is already registered."
    if family not in ModelVersion.Family.values:
        errors["family"] = f"Unknown pipeline family {family!r}."
    if dtype not in ModelVersion.DType.values:
        errors["dtype"] = f"Unknown dtype {dtype!r}."
    path = None
    try:
        path = resolve_checkpoint((location or "").strip())
    except CheckpointError as exc:
        errors["location"] = str(exc)
    if path is not None and path.is_file():
        if not config_location:
            errors["config_location"] = "A single-file checkpoint needs a config folder (configs cannot be downloaded)."
        else:
            try:
                resolve_checkpoint(config_location.strip())
            except CheckpointError as exc:
                errors["config_location"] = str(exc)
    if errors:
        raise ControlError("; ".join(f"{k}: {v}" for k, v in errors.items()), errors)
    digest = hash_checkpoint(path)
    with transaction.atomic():
        version = ModelVersion.objects.create(
            name=name,
            family=family,
            location=location.strip(),
            config_location=(config_location or "").strip(),
            dtype=dtype,
            content_hash=digest,
            status=ModelVersion.Status.STAGED,
            registered_by=_user(by),
        )
        AuditEvent.record(
            by, "version.register", version=version,
            after={"location": version.location, "family": family, "content_hash": digest},
        )  # fmt: skip
        if validate:
            transaction.on_commit(lambda: queue_validation(version))
    return version


def queue_validation(version: ModelVersion) -> None:
    validate_version.apply_async(args=(version.pk,), queue=settings.CELERY_TASK_DEFAULT_QUEUE)


def request_validation(version: ModelVersion, by) -> None:
    """Validate a staged or failed version again (after fixing its files, say)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status not in (ModelVersion.Status.STAGED, ModelVersion.Status.INVALID):
            raise ControlError(f"{version.name} is {version.status}; only staged or failed versions are validated.")
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.STAGED, validation_error="")
        AuditEvent.record(by, "version.validate", version=version, before={"status": version.status})
        transaction.on_commit(lambda: queue_validation(version))


def smoke_render(version: ModelVersion):
    """Load the version the way jobs load it and render the fixed smoke image; returns (image, seconds)."""
    from PIL import Image

    from . import engines

    started = time.perf_counter()
    with engines.engines.use(version, width=SMOKE_SIZE, height=SMOKE_SIZE) as engine:
        if version.family == ModelVersion.Family.LATENT_UPSCALER_X2:
            source = Image.new("RGB", (SMOKE_SIZE // 2, SMOKE_SIZE // 2), (200, 40, 40))
            result = engine.upscale(
                prompts=[SMOKE_PROMPT], images=[source], seeds=[SMOKE_SEED], steps=SMOKE_STEPS,
                strength=1.0, guidance=0.0,
            )  # fmt: skip
            image = result.images[0]
        else:
            result = engine.run(
                prompt=SMOKE_PROMPT, seed=SMOKE_SEED, width=SMOKE_SIZE, height=SMOKE_SIZE,
                steps=SMOKE_STEPS, guidance=7.5,
            )  # fmt: skip
            image = result.image
    return image, time.perf_counter() - started


def record_smoke(version: ModelVersion, worker: str = "") -> str | None:
    """Smoke-render the version and store the image and its time; returns the error, or None."""
    try:
        image, seconds = smoke_render(version)
    except Exception as exc:  # the version's verdict, never the worker's crash
        return f"{type(exc).__name__}: {exc}"[:4000]
    relative = f"versions/{version.pk}/smoke.png"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG")
    now = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(
        smoke_image=relative, smoke_seconds=seconds, validated_on=worker, validated_at=now
    )
    version.smoke_image, version.smoke_seconds, version.validated_on, version.validated_at = (
        relative,
        seconds,
        worker,
        now,
    )
    return None


def run_validation(version: ModelVersion, worker: str = "") -> bool:
    """Check the files still hash as registered, smoke-render, and record the verdict. True if valid."""
    claimed = ModelVersion.objects.filter(
        pk=version.pk, status__in=(ModelVersion.Status.STAGED, ModelVersion.Status.INVALID)
    ).update(status=ModelVersion.Status.VALIDATING)
    if not claimed:
        return False
    try:
        digest = version.compute_hash()
    except CheckpointError as exc:
        error = str(exc)
    else:
        error = None
        if version.content_hash and digest != version.content_hash:
            error = (
                f"The checkpoint's files changed since registration (sha256 {digest[:12]}…, registered "
                f"{version.content_hash[:12]}…): register it again as a new version."
            )
    error = error or record_smoke(version, worker)
    if error:
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.INVALID, validation_error=error, validated_on=worker,
            validated_at=timezone.now(),
        )  # fmt: skip
        return False
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.VALIDATED, validation_error="")
    version.refresh_from_db()
    return True


@shared_task(name="lanes.rollout.validate_version", acks_late=True, ignore_result=True)
def validate_version(version_id: int) -> str:
    from .heartbeat import worker_ident

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return "missing"
    return "validated" if run_validation(version, worker_ident()) else ModelVersion.objects.get(pk=version_id).status


def retire_version(version: ModelVersion, by) -> None:
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == ModelVersion.Status.RETIRED:
            raise ControlError(f"{version.name} is already retired.")
        users = list(
            Lane.objects.filter(
                Q(active_version=version) | Q(canary_version=version) | Q(refine_version=version)
            ).values_list("name", flat=True)
        )
        if users:
            raise ControlError(f"{version.name} still serves lane {', '.join(users)}: switch those lanes first.")
        before = version.status
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.RETIRED)
        version.status = ModelVersion.Status.RETIRED
        AuditEvent.record(by, "version.retire", version=version, before={"status": before}, after={"status": "retired"})


# Switching a lane's versions


def locked_lane(lane: Lane, expected_revision: int | None) -> Lane:
    """The lane, locked for this transaction, refusing a change made against an old revision."""
    fresh = (
        Lane.objects.select_for_update(of=("self",)).select_related("active_version", "canary_version").get(pk=lane.pk)
    )
    if expected_revision is not None and fresh.revision != expected_revision:
        last = AuditEvent.objects.filter(lane=fresh).first()
        who = f" by {last.actor_name} ({last.action}, {last.at:%H:%M:%S})" if last else ""
        raise ConflictError(
            f"Lane {fresh.name} was changed{who} after you loaded it (revision {fresh.revision}, "
            f"yours {expected_revision}). Nothing was applied: reload and try again."
        )
    return fresh


def save_lane(lane: Lane, fields: list[str]) -> None:
    lane.revision += 1
    lane.save(update_fields=[*fields, "revision"])


def _versions_state(lane: Lane) -> dict:
    return {
        "active": lane.active_version.name,
        "canary": lane.canary_version.name if lane.canary_version_id else None,
        "canary_percent": lane.canary_percent,
    }


def _check_deployable(version: ModelVersion) -> None:
    if version.family != ModelVersion.Family.STABLE_DIFFUSION:
        raise ControlError(f"{version.name} cannot render from a prompt, so it cannot serve a lane.")
    if not version.is_deployable:
        hint = {
            ModelVersion.Status.STAGED: "it has not been validated yet",
            ModelVersion.Status.VALIDATING: "its validation is still running",
            ModelVersion.Status.INVALID: "it failed validation",
            ModelVersion.Status.RETIRED: "it is retired",
        }.get(version.status, version.status)
        raise ControlError(f"{version.name} cannot serve a lane: {hint}.")


def _switch_active(lane: Lane, version: ModelVersion, by, how: str, outcome: str) -> ModelVersion:
    """Make `version` the lane's active version and close the serving release. Returns the old version."""
    old = lane.active_version
    now = timezone.now()
    serving = LaneRelease.objects.filter(lane=lane, outcome=LaneRelease.Outcome.SERVING)
    if not serving.update(ended_at=now, outcome=outcome):
        # A lane from before version history: its first version enters the history now.
        LaneRelease.objects.create(lane=lane, version=old, how="initial", started_at=now, ended_at=now, outcome=outcome)
    LaneRelease.objects.create(lane=lane, version=version, how=how, started_by=_user(by), started_at=now)
    lane.active_version = version
    return old


def record_release(lane: Lane, by, how: str) -> None:
    """Start the lane's history (a new lane), or continue it when its active version was changed elsewhere."""
    serving = LaneRelease.objects.filter(lane=lane, outcome=LaneRelease.Outcome.SERVING).first()
    if serving is not None and serving.version_id == lane.active_version_id:
        return
    now = timezone.now()
    if serving is not None:
        LaneRelease.objects.filter(pk=serving.pk).update(ended_at=now, outcome=LaneRelease.Outcome.SUPERSEDED)
    LaneRelease.objects.create(lane=lane, version=lane.active_version, how=how, started_by=_user(by), started_at=now)


def _user(by):
    return by if by is not None and by.is_authenticated else None


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
        canary = lane.canary_version if lane.canary_version_id == version.pk else None
        if canary is not None:  # activating the canary is promoting it
            lane.canary_version, lane.canary_percent, lane.canary_started_at = None, 0, None
        save_lane(lane, ["active_version", "canary_version", "canary_percent", "canary_started_at"])
        AuditEvent.record(by, "lane.activate", lane=lane, version=version, before=before, after=_versions_state(lane))
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
        save_lane(lane, ["canary_version", "canary_percent", "canary_started_at"])
        AuditEvent.record(
            by, "canary.start" if restart else "canary.percent", lane=lane, version=version,
            before=before, after=_versions_state(lane),
        )  # fmt: skip
        _sync(previous, version)
    return lane


def promote(lane: Lane, by, expected_revision: int | None = None) -> Lane:
    """The canary becomes the active version for every new job."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        if lane.canary_version_id is None:
            raise ControlError(f"Lane {lane.name} has no canary to promote.")
        canary = lane.canary_version
        _check_deployable(canary)
        before = _versions_state(lane)
        old = _switch_active(lane, canary, by, "promoted from canary", LaneRelease.Outcome.SUPERSEDED)
        lane.canary_version, lane.canary_percent, lane.canary_started_at = None, 0, None
        save_lane(lane, ["active_version", "canary_version", "canary_percent", "canary_started_at"])
        AuditEvent.record(by, "canary.promote", lane=lane, version=canary, before=before, after=_versions_state(lane))
        _sync(old, canary)
    return lane


def end_canary(lane: Lane, by, expected_revision: int | None = None, *, reason: str = "", automatic=False) -> Lane:
    """Stop the canary: every new job goes to the active version again."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        if lane.canary_version_id is None:
            raise ControlError(f"Lane {lane.name} has no canary.")
        canary = lane.canary_version
        before = _versions_state(lane)
        lane.canary_version, lane.canary_percent, lane.canary_started_at = None, 0, None
        fields = ["canary_version", "canary_percent", "canary_started_at"]
        if automatic:
            lane.notice = f"Canary {canary.name} rolled back automatically: {reason}"[:500]
            lane.notice_at = timezone.now()
            fields += ["notice", "notice_at"]
        save_lane(lane, fields)
        AuditEvent.record(
            by, "canary.auto-rollback" if automatic else "canary.abort", lane=lane, version=canary,
            before=before, after=_versions_state(lane), note=reason,
        )  # fmt: skip
        _sync(canary)
    return lane


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
        lane.canary_version, lane.canary_percent, lane.canary_started_at = None, 0, None
        save_lane(lane, ["active_version", "canary_version", "canary_percent", "canary_started_at"])
        AuditEvent.record(by, "lane.rollback", lane=lane, version=target, before=before, after=_versions_state(lane))
        _sync(old, target, canary)
    return lane


def dismiss_notice(lane: Lane, by) -> None:
    with transaction.atomic():
        lane = Lane.objects.select_for_update().get(pk=lane.pk)
        if not lane.notice:
            return
        before = {"notice": lane.notice}
        lane.notice, lane.notice_at = "", None
        lane.save(update_fields=["notice", "notice_at"])
        AuditEvent.record(by, "lane.dismiss-notice", lane=lane, before=before)


# Automatic rollback


@dataclass(frozen=True)
class ArmFigures:
    version: str
    finished: int
    failed: int
    p95_run_s: float | None
    judged: int
    flagged: int

    @property
    def error_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.judged if self.judged else 0.0


def arm_figures(lane: Lane, version: ModelVersion, since) -> ArmFigures:
    # Routed traffic only: experiment jobs are pinned to their arm's version, not split by the canary.
    jobs = Job.objects.filter(
        lane=lane, model_version=version, finished_at__gte=since, state__in=(Job.State.SUCCEEDED, Job.State.FAILED),
        experiment_cell__isnull=True,
    )  # fmt: skip
    rows = list(jobs.values_list("state", "run_seconds"))
    judged = Verification.objects.filter(
        lane=lane, model_version=version, created_at__gte=since,
        status__in=(Verification.Status.PASSED, Verification.Status.FLAGGED), source__isnull=True,
        job__experiment_cell__isnull=True,
    ).values_list("status", flat=True)  # fmt: skip
    verdicts = list(judged)
    return ArmFigures(
        version=version.name,
        finished=len(rows),
        failed=sum(1 for state, _ in rows if state == Job.State.FAILED),
        p95_run_s=nearest_rank([s for state, s in rows if state == Job.State.SUCCEEDED and s is not None], 95),
        judged=len(verdicts),
        flagged=sum(1 for v in verdicts if v == Verification.Status.FLAGGED),
    )


@dataclass(frozen=True)
class CanaryVerdict:
    regressed: bool
    reasons: list[str]
    waiting: list[str]
    canary: ArmFigures
    baseline: ArmFigures

    def describe(self) -> str:
        if self.regressed:
            return "; ".join(self.reasons)
        return "; ".join(self.waiting) or "canary within thresholds"


def judge_canary(lane: Lane, now=None) -> CanaryVerdict | None:
    """Compare the canary with the active version over the lane's window (since the canary started)."""
    if lane.canary_version_id is None:
        return None
    now = now or timezone.now()
    since = max(lane.canary_started_at or now, now - timedelta(minutes=lane.canary_window_minutes))
    canary = arm_figures(lane, lane.canary_version, since)
    baseline = arm_figures(lane, lane.active_version, since)
    minimum = lane.canary_min_samples
    reasons, waiting = [], []
    if min(canary.finished, baseline.finished) < minimum:
        waiting.append(
            f"too few finished jobs to judge run time and errors (canary {canary.finished}, "
            f"baseline {baseline.finished}, need {minimum} each)"
        )
    else:
        increase = canary.error_rate - baseline.error_rate
        if increase > lane.canary_max_error_rate_increase:
            reasons.append(
                f"error rate {canary.error_rate:.1%} vs {baseline.error_rate:.1%} (+{increase:.1%}, limit "
                f"+{lane.canary_max_error_rate_increase:.1%}; n={canary.finished}/{baseline.finished})"
            )
        if canary.p95_run_s is not None and baseline.p95_run_s:
            ratio = canary.p95_run_s / baseline.p95_run_s
            if ratio > lane.canary_max_p95_ratio:
                reasons.append(
                    f"p95 run time {canary.p95_run_s * 1000:.0f} ms vs {baseline.p95_run_s * 1000:.0f} ms "
                    f"(×{ratio:.2f}, limit ×{lane.canary_max_p95_ratio:.2f})"
                )
    if min(canary.judged, baseline.judged) < minimum:
        waiting.append(
            f"too few verified images to judge text (canary {canary.judged}, baseline {baseline.judged}, "
            f"need {minimum} each)"
        )
    else:
        increase = canary.flag_rate - baseline.flag_rate
        if increase > lane.canary_max_flag_rate_increase:
            reasons.append(
                f"verification flag rate {canary.flag_rate:.1%} vs {baseline.flag_rate:.1%} (+{increase:.1%}, "
                f"limit +{lane.canary_max_flag_rate_increase:.1%}; n={canary.judged}/{baseline.judged})"
            )
    return CanaryVerdict(bool(reasons), reasons, waiting, canary, baseline)


@shared_task(name="lanes.rollout.check_canaries", ignore_result=True)
def check_canaries() -> dict[str, str]:
    """Beat: roll back every canary that is worse than its baseline past the lane's thresholds."""
    outcome: dict[str, str] = {}
    for lane in Lane.objects.filter(canary_version__isnull=False).select_related("active_version", "canary_version"):
        verdict = judge_canary(lane)
        if verdict is None:
            continue
        if verdict.regressed:
            try:
                end_canary(lane, None, lane.revision, reason=verdict.describe(), automatic=True)
            except ControlError as exc:  # someone changed the lane meanwhile: judge it again next time
                outcome[lane.name] = f"not rolled back: {exc}"
                continue
            outcome[lane.name] = f"rolled back: {verdict.describe()}"
        else:
            outcome[lane.name] = f"kept: {verdict.describe()}"
    return outcome
