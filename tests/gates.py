"""Holding a job at a chosen sampling step until a condition holds, so a test can order "a higher class
arrives while a lower one renders" deterministically. Only the test's threads are ordered: the
preemption decision, the pause, the hand-over and the resume are the product's own code."""

import threading
from collections.abc import Callable

from lanes import lifecycle
from lanes.models import Job
from lanes.slots import slots
from tests.conftest import wait_until


class Gates:
    """Holds the jobs of a prompt at a step until a condition holds (the test orders the threads, nothing more)."""

    def __init__(self, monkeypatch) -> None:
        self.gates: dict[tuple[str, int], Callable[[Job], bool]] = {}
        self.reached: dict[tuple[str, int], threading.Event] = {}
        self.seen: list[tuple[str, int]] = []  # (prompt, step) of every step boundary reached, in order
        real = lifecycle._progress_recorder

        def recorder(job, offset=0):
            record = real(job, offset)

            def on_step(step: int) -> None:
                record(step)
                self.seen.append((job.prompt, step))
                gate = self.gates.pop((job.prompt, step), None)
                if gate is not None:
                    self.reached[(job.prompt, step)].set()
                    wait_until(lambda: gate(job), timeout=60, what=f"the condition holding job {job.pk} at {step}")

            return on_step

        monkeypatch.setattr(lifecycle, "_progress_recorder", recorder)

    def hold(self, prompt: str, step: int, until: Callable[[Job], bool]) -> threading.Event:
        """Hold the next job with this prompt at `step` until `until(job)`; returns an event set when it is held."""
        self.gates[(prompt, step)] = until
        self.reached[(prompt, step)] = reached = threading.Event()
        return reached

    def until_waiting(self, prompt: str, step: int) -> threading.Event:
        """Hold it until another job waits for its lane's slot."""
        return self.hold(prompt, step, lambda job: slots.waiting(job.lane_id) > 0)

    def until_set(self, prompt: str, step: int) -> tuple[threading.Event, threading.Event]:
        release = threading.Event()
        return self.hold(prompt, step, lambda job: release.is_set()), release
