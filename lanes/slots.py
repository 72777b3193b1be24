"""Per-lane concurrency on this worker's GPU.

Each lane may run at most `max_concurrency` jobs at once on one GPU. The limit is
re-read from the database while waiting, so a change made in the console takes effect
on running workers within REFRESH seconds, without a restart. Jobs waiting for a slot of
the same lane are served by priority class, then in arrival order, and on a lane with two
or more slots one is kept for critical work, so a critical job that reaches this worker
starts without waiting for a standard or background job to finish.

A running job may hand its slot back at a step boundary (`pause`, see lanes.preemption) and
wait for one again, ahead of the jobs of its class that arrived after it. It may also keep its slot
and only stand still while a job of a higher class renders on this GPU (`stand_aside`): the two
would otherwise share the device's compute, and the higher class's run would take up to twice as long.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from .models import Lane, Priority

REFRESH = 1.0
# Between two renders of a higher class (storing one, claiming the next) a job standing aside keeps still
# this long while a job of that class holds or waits for a slot here, so that its next step does not
# start just as the next higher-class render does. Bounded: that job may be waiting for memory.
BETWEEN_RENDERS = 0.1
RANK: dict[str, int] = {Priority.CRITICAL: 0, Priority.STANDARD: 1, Priority.BACKGROUND: 2}
FIRST = -1  # the rank of a paused job that has waited its limit: it takes the next slot that frees


@dataclass(eq=False)
class Slot:
    """A job's place on its lane: waiting, holding a slot, or paused (waiting again, slot handed over)."""

    lane_id: int
    ticket: tuple[int, int]  # (rank, arrival): lower is served first
    info: Any = None  # what the job needs, for whoever decides to preempt for it (lanes.preemption)
    held: bool = False
    rendering: bool = False  # its job's pipeline runs (memory reserved, model loaded): see `rendering`
    cls: int = 1  # the job's class rank; unlike the ticket's, never FIRST

    @property
    def rank(self) -> int:
        return self.ticket[0]


class LaneSlots:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, int] = defaultdict(int)
        self._waiting: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self._slots: dict[tuple[int, int], Slot] = {}
        self._held: set[Slot] = set()  # every lane's, on this worker (one GPU)
        self._limits: dict[int, tuple[int, float]] = {}
        self._arrivals = itertools.count()

    def limit(self, lane_id: int) -> int:
        cached = self._limits.get(lane_id)
        if cached is None or time.monotonic() - cached[1] > REFRESH:
            value = Lane.objects.filter(pk=lane_id).values_list("max_concurrency", flat=True).first() or 1
            self._limits[lane_id] = cached = (value, time.monotonic())
        return cached[0]

    def running(self, lane_id: int) -> int:
        return self._running[lane_id]

    def waiting(self, lane_id: int) -> int:
        """Jobs of the lane waiting here for a slot."""
        with self._cond:
            return len(self._waiting[lane_id])

    def total_running(self) -> int:
        with self._cond:
            return sum(self._running.values())

    def outranking(self, slot: Slot) -> Slot | None:
        """The next job in line for the slot's lane when it outranks the slot's job and no slot is free for it."""
        with self._cond:
            queue = self._waiting[slot.lane_id]
            if not queue or queue[0][0] >= slot.rank:
                return None
        limit = self.limit(slot.lane_id)  # outside the lock: it may read the database
        with self._cond:
            queue = self._waiting[slot.lane_id]
            if not queue or queue[0][0] >= slot.rank or self._running[slot.lane_id] < limit:
                return None
            return self._slots[queue[0]]

    def rendering(self, slot: Slot, value: bool = True) -> None:
        """Mark the slot's job as rendering (its pipeline call runs) or no longer: jobs of lower classes
        stand aside for it."""
        with self._cond:
            slot.rendering = value
            self._cond.notify_all()

    def rendering_above(self, slot: Slot) -> int | None:
        """The highest class (lowest rank) rendering on this worker above the slot's job, if any."""
        with self._cond:
            return self._rendering_above(slot)

    def _rendering_above(self, slot: Slot) -> int | None:
        """`rendering_above`, called under the lock."""
        return min((s.cls for s in self._held if s.rendering and s.cls < slot.cls), default=None)

    def stand_aside(self, slot: Slot, check: Callable[[], None] | None = None, until: float = 0.0) -> None:
        """Keep the slot, but wait while a job of a higher class renders on this worker (and up to
        BETWEEN_RENDERS after, while one is about to render), at most until the monotonic time `until`,
        and no longer once a higher class waits in the slot's lane's line with no slot free (the caller
        then hands the slot over). `check` runs about every REFRESH seconds and may raise to give up."""
        checked = time.monotonic()
        quiet_since: float | None = None  # when the last higher-class render here ended
        while True:
            now = time.monotonic()
            if check is not None and now - checked >= REFRESH:
                check()
                checked = now
            limit = self.limit(slot.lane_id)  # cached; outside the lock, as it may read the database
            with self._cond:
                queue = self._waiting[slot.lane_id]
                if queue and queue[0][0] < slot.cls and self._running[slot.lane_id] >= limit:
                    return
                if now >= until:
                    return
                timeout = min(REFRESH, until - now)
                if self._rendering_above(slot) is None:
                    if quiet_since is None:
                        quiet_since = now
                    if now - quiet_since >= BETWEEN_RENDERS or not self._higher_next(slot):
                        return
                    timeout = min(timeout, quiet_since + BETWEEN_RENDERS - now)
                else:
                    quiet_since = None
                self._cond.wait(timeout)

    def _higher_next(self, slot: Slot) -> bool:
        """Whether a job of a higher class than the slot's holds a slot on this worker or waits in a line for
        one (it is about to render). Called under the lock."""
        return any(s.cls < slot.cls for s in self._held) or any(
            queue and self._slots[queue[0]].cls < slot.cls for queue in self._waiting.values()
        )

    def _wait_turn(self, slot: Slot, check: Callable[[], None] | None = None, first_after: float | None = None) -> None:
        """Wait in line until the slot's job may run (it then holds a slot). `check` runs about every REFRESH
        seconds and may raise to give up; past the monotonic time `first_after` the job goes to the front."""
        lane_id = slot.lane_id
        with self._cond:
            heapq.heappush(self._waiting[lane_id], slot.ticket)
            self._slots[slot.ticket] = slot
            self._cond.notify_all()  # a job standing aside may hand its slot to this one
        try:
            while True:
                if check is not None:
                    check()
                limit = self.limit(lane_id)
                with self._cond:
                    queue = self._waiting[lane_id]
                    if first_after is not None and slot.rank != FIRST and time.monotonic() >= first_after:
                        queue.remove(slot.ticket)
                        self._slots.pop(slot.ticket)
                        slot.ticket = (FIRST, slot.ticket[1])
                        self._slots[slot.ticket] = slot
                        queue.append(slot.ticket)
                        heapq.heapify(queue)
                    # Non-critical work leaves one slot free for critical work when there are two or more.
                    usable = limit if slot.rank <= 0 or limit < 2 else limit - 1
                    if self._running[lane_id] < usable and queue[0] == slot.ticket:
                        heapq.heappop(queue)
                        self._slots.pop(slot.ticket)
                        self._running[lane_id] += 1
                        slot.held = True
                        self._held.add(slot)
                        self._cond.notify_all()  # the next in line may fit too
                        return
                    self._cond.wait(REFRESH)
        except BaseException:
            with self._cond:
                self._waiting[lane_id].remove(slot.ticket)
                self._slots.pop(slot.ticket, None)
                heapq.heapify(self._waiting[lane_id])
                self._cond.notify_all()
            raise

    def _release(self, slot: Slot) -> None:
        with self._cond:
            if slot.held:
                slot.held = False
                self._held.discard(slot)
                self._running[slot.lane_id] -= 1
                self._cond.notify_all()

    def pause(self, slot: Slot, check: Callable[[], None] | None = None, first_after: float | None = None) -> None:
        """Hand the slot over and wait for one again (see `_wait_turn` for `check` and `first_after`).

        The job keeps its arrival number, so it resumes before the jobs of its class that came after it."""
        self._release(slot)
        self._wait_turn(slot, check, first_after)

    @contextmanager
    def acquire(self, lane_id: int, priority: str = Priority.STANDARD, info: Any = None) -> Iterator[Slot]:
        rank = RANK.get(priority, 1)
        slot = Slot(lane_id, (rank, next(self._arrivals)), info, cls=rank)
        self._wait_turn(slot)
        try:
            yield slot
        finally:
            self._release(slot)
            close_old_connections()


slots = LaneSlots()
