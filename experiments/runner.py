"""Running an experiment: its cells become background jobs through admission, a few at a time.

A pump keeps at most EXPERIMENT_MAX_OUTSTANDING jobs of an experiment unfinished; it runs
when the experiment starts or resumes, when one of its jobs finishes or its text check ends (the
experiments app listens for lanes' job_finished and verification_finished signals), and from beat.
It is finished when every cell has run and every text check is in.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.access import team_of
from lanes.actions import BriefRejected, cancel_job, submit_brief
from lanes.models import AuditEvent, Job, Priority, Verification
from webhooks import outbox

from .definition import OVERRIDES, Definition
from .models import Arm, Experiment, ExperimentCell


def create(by, definition: Definition) -> Experiment:
    """Store the experiment with every cell, then start submitting its jobs."""
    with transaction.atomic():
        experiment = Experiment.objects.create(
            name=definition.name, created_by=by, team_id=team_of(by), prompts=definition.prompts,
            seeds=definition.seeds, definition=definition.text,
        )  # fmt: skip
        arms = [
            Arm.objects.create(
                experiment=experiment,
                name=spec.name,
                position=i,
                lane=spec.lane,
                model_version=spec.version,
                **spec.overrides,
            )  # fmt: skip
            for i, spec in enumerate(definition.arms)
        ]
        ExperimentCell.objects.bulk_create(
            ExperimentCell(experiment=experiment, arm=arm, prompt_index=p, sample_index=s, seed=seed)
            for p in range(len(definition.prompts))
            for s, seed in enumerate(definition.seeds)
            for arm in arms
        )
        AuditEvent.record(
            by, "experiment.start", target=experiment.name,
            after={"arms": [a.name for a in arms], "jobs": definition.job_count},
        )  # fmt: skip
        transaction.on_commit(lambda: pump(experiment.pk))
    return experiment


def pump(experiment_id: int) -> int:
    """Submit the next cells (in prompt, seed, arm order) up to the outstanding limit; returns how many."""
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
        if experiment is None or experiment.state != Experiment.State.RUNNING:
            return 0
        cells = ExperimentCell.objects.filter(experiment=experiment)
        outstanding = cells.filter(job__isnull=False).exclude(job__state__in=Job.TERMINAL).count()
        room = settings.EXPERIMENT_MAX_OUTSTANDING - outstanding
        submitted = 0
        for cell in cells.filter(job__isnull=True).select_related("arm__lane", "arm__model_version")[: max(room, 0)]:
            arm, prompt = cell.arm, experiment.prompts[cell.prompt_index]
            try:
                job = submit_brief(
                    experiment.created_by, prompt=prompt["prompt"], expected_text=prompt.get("expected_text", ""),
                    intent="experiment", seed=cell.seed, priority=Priority.BACKGROUND, lane=arm.lane,
                    model_version=arm.model_version,
                    **{key: getattr(arm, key) for key in OVERRIDES if getattr(arm, key) is not None},
                )  # fmt: skip
            except BriefRejected as exc:  # the lane changed since the experiment was defined
                reason = f"arm {arm.name} can no longer run: {exc}"[:300]
                Experiment.objects.filter(pk=experiment.pk).update(
                    state=Experiment.State.CANCELLED, finished_at=timezone.now(), stopped_reason=reason
                )
                AuditEvent.record(None, "experiment.stop", target=experiment.name, note=reason)
                return submitted
            ExperimentCell.objects.filter(pk=cell.pk).update(job=job)
            submitted += 1
        # Finished once every cell has run and every text check of its images is in (the summary's pass
        # rates and edit distances count them).
        checking = Verification.objects.filter(
            job__experiment_cell__experiment=experiment,
            status__in=(Verification.Status.PENDING, Verification.Status.RUNNING),
        )
        if not submitted and outstanding == 0 and not cells.filter(job__isnull=True).exists() and not checking.exists():
            if Experiment.objects.filter(pk=experiment.pk, state=Experiment.State.RUNNING).update(
                state=Experiment.State.FINISHED, finished_at=timezone.now()
            ):
                outbox.emit("experiment.finished", experiment.webhook_data(), experiment.team_id)
    return submitted


def pause(experiment: Experiment, by=None) -> bool:
    with transaction.atomic():
        paused = Experiment.objects.filter(pk=experiment.pk, state=Experiment.State.RUNNING).update(
            state=Experiment.State.PAUSED
        )
        if paused:
            AuditEvent.record(by, "experiment.pause", target=experiment.name)
    return bool(paused)


def resume(experiment: Experiment, by=None) -> bool:
    with transaction.atomic():
        resumed = Experiment.objects.filter(pk=experiment.pk, state=Experiment.State.PAUSED).update(
            state=Experiment.State.RUNNING
        )
        if resumed:
            AuditEvent.record(by, "experiment.resume", target=experiment.name)
            transaction.on_commit(lambda: pump(experiment.pk))
    return bool(resumed)


def cancel(experiment: Experiment, by=None) -> int | None:
    """Stop the experiment and cancel its jobs that have not started: how many, or None if it had already ended."""
    with transaction.atomic():
        done = Experiment.objects.filter(
            pk=experiment.pk, state__in=(Experiment.State.RUNNING, Experiment.State.PAUSED)
        ).update(state=Experiment.State.CANCELLED, finished_at=timezone.now(), stopped_reason="cancelled")
        if not done:
            return None
        waiting = Job.objects.filter(experiment_cell__experiment=experiment, state__in=Job.CANCELLABLE)
        cancelled = sum(1 for job in waiting if cancel_job(job))
        AuditEvent.record(by, "experiment.cancel", target=experiment.name, after={"jobs_cancelled": cancelled})
        return cancelled


def pump_running() -> int:
    """Beat: keep every running experiment fed (job completions feed them too)."""
    return sum(
        pump(pk) for pk in Experiment.objects.filter(state=Experiment.State.RUNNING).values_list("pk", flat=True)
    )


def on_job_finished(sender, job: Job, **kwargs) -> None:
    """A finished job of an experiment makes room for its next cell."""
    on_verification_finished(sender, job.pk)


def on_verification_finished(sender, job_id: int, **kwargs) -> None:
    """A finished job, or the end of its text check, may finish its experiment."""
    experiment_id = ExperimentCell.objects.filter(job_id=job_id).values_list("experiment_id", flat=True).first()
    if experiment_id is not None:
        pump(experiment_id)
