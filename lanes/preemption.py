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

Standing aside. A running job that nobody waits for may still share its GPU with a higher class's
render (another lane's, or a critical job in the slot kept for critical work): two pipeline calls on
one device share its compute, so each takes up to twice as long. While a job of a higher class
renders on this worker (`Preemptor.rendering` marks its pipeline call: model loaded, memory
reserved), a lower-class job stands still at its step boundary, keeping its slot and its memory, and
goes on when no higher class renders (`slots.stand_aside`). A job whose call is about to start looks
first too (step 0): its prompt encoding and first step would otherwise share the device. It shows as
paused like any other pause and counts against the same time limit. A job waiting for memory or a
model load is not rendering, so nobody stands aside for it and a job standing aside never holds up the
job it stands aside for.

Limits (settings): a job paused PREEMPT_MAX_PAUSES times, or for PREEMPT_MAX_PAUSED_SECONDS in all,
is not paused again, and a pause that reaches the time limit takes the next slot that frees, ahead
of everyone. PREEMPTION=false turns both off, PREEMPT_STAND_ASIDE=false only standing aside; a lane
opts out with `preemptible: false`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings

from telemetry import push

from . import engines
from .models import CheckpointError, Job, Lane, ModelVersion
from .slots import RANK, Slot, slots

log = logging.getLogger(__name__)


PRIORITY_OF = {rank: priority for priority, rank in RANK.items()}


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
        # A hosted engine's job renders elsewhere: it neither pauses for this device's work nor holds it up.
        self.local = not job.model_version.is_hosted

    def __call__(self, step: int) -> None:
        if step >= self.job.steps or not self.local:
            return  # after the last step only the decode is left: nothing to gain
        if not settings.PREEMPTION or self.paused_seconds >= settings.PREEMPT_MAX_PAUSED_SECONDS:
            return
        if self._hand_over(step):
            return
        if settings.PREEMPT_STAND_ASIDE and (above := slots.rendering_above(self.slot)) is not None:
            if self._preemptible():
                # It ends early when a higher class comes to wait for this lane's slot: then hand it over.
                self.stand_aside(PRIORITY_OF[above], step)
                if self.paused_seconds < settings.PREEMPT_MAX_PAUSED_SECONDS:
                    self._hand_over(step)

    def _hand_over(self, step: int) -> bool:
        """Pause for the next job in the lane's line, if it is of a higher class and no slot is free for it."""
        if self.pauses >= settings.PREEMPT_MAX_PAUSES or (waiter := slots.outranking(self.slot)) is None:
            return False
        if not isinstance(waiter.info, Need) or RANK.get(waiter.info.priority, 1) >= self.slot.cls:
            return False  # a paused job past its time limit is first in line, but is not preempted for
        need: Need = waiter.info
        if need.version.pk == self.own.version.pk and need.adapters != self.own.adapters:
            return False
        if not self._preemptible() or not need.fits():
            return False
        self.pause(need.priority, step)
        return True

    def _preemptible(self) -> bool:
        return Lane.objects.filter(pk=self.job.lane_id, preemptible=True).exists()

    @contextmanager
    def rendering(self) -> Iterator[None]:
        """Around the job's pipeline call: while it runs, lower classes on this GPU stand aside for it."""
        if self.local:
            slots.rendering(self.slot, True)
        try:
            yield
        finally:
            if self.local:
                slots.rendering(self.slot, False)

    def pause(self, for_priority: str, step: int) -> None:
        """Hand the slot to the waiting job and wait for one again."""
        self._hold(for_priority, step, "paused", lambda check, until: slots.pause(self.slot, check, until))
        self.pauses += 1

    def stand_aside(self, for_priority: str, step: int) -> None:
        """Keep the slot, and wait while a higher class renders on this GPU."""
        self._hold(for_priority, step, "stood aside", lambda check, until: slots.stand_aside(self.slot, check, until))

    def _hold(self, for_priority: str, step: int, verb: str, wait: Callable[[Callable[[], None], float], None]) -> None:
        job = self.job
        if not job.mark_paused(for_priority):
            raise JobStopped(f"Job {job.pk} is no longer running on this worker.")
        push.job_state(job)
        log.info("job %s %s at step %s for a %s job", job.pk, verb, step, for_priority)
        started = time.monotonic()
        until = started + settings.PREEMPT_MAX_PAUSED_SECONDS - self.paused_seconds

        def check() -> None:
            if not job.still_paused():
                raise JobStopped(f"Job {job.pk} was cancelled or requeued while paused.")

        try:
            wait(check, until)
        finally:
            self.paused_seconds += time.monotonic() - started
        if not job.mark_resumed():
            raise JobStopped(f"Job {job.pk} was cancelled or requeued while paused.")
        push.job_state(job)
        log.info("job %s resumed at step %s after %.2f s", job.pk, step, time.monotonic() - started)
