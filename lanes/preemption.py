"""Step-boundary preemption: a running job pauses while a higher class waits for its lane's slot on this GPU.

Critical work preempts standard and background work; standard preempts background. Only jobs of
the same lane on the same worker (one worker per GPU): a worker never pauses another's job, and
pausing a job of another lane would not give the waiting job a slot.

How the waiting job is noticed. A lane's slots live in the worker process (lanes.slots), and every
job the worker has taken from the broker waits in its lane's line there (`slots.acquire`) with its
class and what it needs (`Need`): with late acks and a prefetch multiplier of 1 the worker holds no
more messages than it has pool threads, so a prefetched delivery is never parked out of sight of the
slots. A running job looks at its lane's line at every sampling-step boundary (diffusers'
`callback_on_step_end`, through the engine's per-step callback): an in-memory check under the slots'
lock, with no query and no message unless someone outranks it. Job rows still queued in the broker
are not preempted for: the broker delivers critical messages first (priorities), and a worker cannot
tell whether the next critical message will reach it or another GPU's worker, so pausing for a row
could pause the wrong GPU.

Pausing. The job's thread stays inside the step callback: its latents, scheduler state and seeded
generator stay exactly where they are, so it resumes from the same step and its image is
bit-identical to an uninterrupted run. Its activation memory stays reserved in the engine cache,
so a waiting job that would not fit beside it is not preempted for (nor one that needs another LoRA
set on the same engine: an engine runs one adapter set at a time, and the two would wait on each
other). The paused job hands its slot over (`slots.pause`) and waits in line again, ahead of the
jobs of its class that arrived after it; the lane's cap is re-read live while it waits. About once a
second it reads its row: cancelled, or requeued by reconcile, it stops (`JobStopped` unwinds the
pipeline call, which frees its memory). A worker killed while a job is paused loses the paused state
with the process; reconcile requeues the job like any running one and it renders again from step 0.

Limits (settings): a job paused PREEMPT_MAX_PAUSES times, or for PREEMPT_MAX_PAUSED_SECONDS in all,
is not paused again, and a pause that reaches the time limit takes the next slot that frees, ahead
of everyone. PREEMPTION=false turns it off; a lane opts out with `preemptible: false`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from django.conf import settings

from telemetry import push

from . import engines
from .models import CheckpointError, Job, Lane, ModelVersion
from .slots import Slot, slots

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """A paused job was cancelled, requeued or deleted meanwhile: its run stops."""


@dataclass(frozen=True)
class Need:
    """What a job waiting for a slot needs: read by a running job deciding whether to pause for it."""

    priority: str
    version: ModelVersion
    width: int
    height: int
    adapters: str  # the pinned adapter set, as JSON

    @classmethod
    def of(cls, job: Job) -> Need:
        scale = job.refine_scale if job.is_cascade else 1
        adapters = json.dumps(job.adapters, sort_keys=True)
        return cls(job.priority, job.model_version, job.width // scale, job.height // scale, adapters)

    def fits(self) -> bool:
        """Whether it would find GPU memory now, beside every running and paused job."""
        try:
            return engines.engine_cache.fits(self.version, width=self.width, height=self.height)
        except CheckpointError:  # a version that will not load: its job fails anyway, pausing gains nothing
            return False


class Preemptor:
    """The step-boundary hook of one running job holding `slot`."""

    def __init__(self, job: Job, slot: Slot) -> None:
        self.job = job
        self.slot = slot
        self.own = Need.of(job)
        self.pauses = 0
        self.paused_seconds = 0.0

    def __call__(self, step: int) -> None:
        if step >= self.job.steps or not self._may_pause():
            return  # after the last step only the decode is left: nothing to gain
        waiter = slots.outranking(self.slot)
        if waiter is None or not isinstance(waiter.info, Need):
            return
        need: Need = waiter.info
        if need.version.pk == self.own.version.pk and need.adapters != self.own.adapters:
            return
        if not Lane.objects.filter(pk=self.job.lane_id, preemptible=True).exists() or not need.fits():
            return
        self.pause(need.priority, step)

    def _may_pause(self) -> bool:
        return (
            settings.PREEMPTION
            and self.pauses < settings.PREEMPT_MAX_PAUSES
            and self.paused_seconds < settings.PREEMPT_MAX_PAUSED_SECONDS
        )

    def pause(self, for_priority: str, step: int) -> None:
        job = self.job
        if not job.mark_paused(for_priority):
            raise JobStopped(f"Job {job.pk} is no longer running on this worker.")
        push.job_state(job)
        log.info("job %s paused at step %s for a %s job", job.pk, step, for_priority)
        started = time.monotonic()
        first_after = started + settings.PREEMPT_MAX_PAUSED_SECONDS - self.paused_seconds

        def check() -> None:
            if not job.still_paused():
                raise JobStopped(f"Job {job.pk} was cancelled or requeued while paused.")

        try:
            slots.pause(self.slot, check, first_after)
        finally:
            self.pauses += 1
            self.paused_seconds += time.monotonic() - started
        if not job.mark_resumed():
            raise JobStopped(f"Job {job.pk} was cancelled or requeued while paused.")
        push.job_state(job)
        log.info("job %s resumed at step %s after %.2f s", job.pk, step, time.monotonic() - started)
