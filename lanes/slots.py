"""Per-lane concurrency on this worker's GPU.

Each lane may run at most `max_concurrency` jobs at once on one GPU. The limit is
re-read from the database while waiting, so a change made in the console takes effect
on running workers within REFRESH seconds, without a restart. Jobs waiting for a slot of
the same lane are served by priority class, then in arrival order, and on a lane with two
or more slots one is kept for critical work, so a critical job that reaches this worker
starts without waiting for a standard or background job to finish.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import close_old_connections

from .models import Lane, Priority

REFRESH = 1.0
RANK: dict[str, int] = {Priority.CRITICAL: 0, Priority.STANDARD: 1, Priority.BACKGROUND: 2}


class LaneSlots:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, int] = defaultdict(int)
        self._waiting: dict[int, list[tuple[int, int]]] = defaultdict(list)
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

    @contextmanager
    def acquire(self, lane_id: int, priority: str = Priority.STANDARD) -> Iterator[None]:
        ticket = (RANK.get(priority, 1), next(self._arrivals))
        with self._cond:
            heapq.heappush(self._waiting[lane_id], ticket)
        try:
            while True:
                limit = self.limit(lane_id)
                with self._cond:
                    queue = self._waiting[lane_id]
                    # Non-critical work leaves one slot free for critical work when there are two or more.
                    usable = limit if ticket[0] == 0 or limit < 2 else limit - 1
                    if self._running[lane_id] < usable and queue[0] == ticket:
                        heapq.heappop(queue)
                        self._running[lane_id] += 1
                        self._cond.notify_all()  # the next in line may fit too
                        break
                    self._cond.wait(REFRESH)
        except BaseException:
            with self._cond:
                self._waiting[lane_id].remove(ticket)
                heapq.heapify(self._waiting[lane_id])
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._running[lane_id] -= 1
                self._cond.notify_all()
            close_old_connections()


slots = LaneSlots()
