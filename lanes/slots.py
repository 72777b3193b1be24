"""Per-lane concurrency on this worker's GPU.

Each lane may run at most `max_concurrency` jobs at once on one GPU. The limit is
re-read from the database while waiting, so a change made in the console takes effect
on running workers within REFRESH seconds, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import close_old_connections

from .models import Lane

REFRESH = 1.0


class LaneSlots:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, int] = defaultdict(int)
        self._limits: dict[int, tuple[int, float]] = {}

    def limit(self, lane_id: int) -> int:
        cached = self._limits.get(lane_id)
        if cached is None or time.monotonic() - cached[1] > REFRESH:
            value = Lane.objects.filter(pk=lane_id).values_list("max_concurrency", flat=True).first() or 1
            self._limits[lane_id] = cached = (value, time.monotonic())
        return cached[0]

    def running(self, lane_id: int) -> int:
        return self._running[lane_id]

    @contextmanager
    def acquire(self, lane_id: int) -> Iterator[None]:
        while True:
            limit = self.limit(lane_id)
            with self._cond:
                if self._running[lane_id] < limit:
                    self._running[lane_id] += 1
                    break
                self._cond.wait(REFRESH)
        try:
            yield
        finally:
            with self._cond:
                self._running[lane_id] -= 1
                self._cond.notify_all()
            close_old_connections()


slots = LaneSlots()
