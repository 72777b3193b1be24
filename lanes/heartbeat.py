"""Worker liveness: each worker process upserts its Worker row every few seconds.

The database is the truth for liveness too: beat requeues running jobs whose worker
stopped heartbeating (see dispatch.reconcile). A worker started to serve every lane
(`gpu_worker` without --lanes) also follows the lanes on each beat: it starts consuming
the queues of lanes created (or given a new queue) since it started, without a restart.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import current_app as app
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from telemetry.sampling import sampling

from .engines import current_device
from .models import Lane, Worker
from .slots import slots

log = logging.getLogger(__name__)


def worker_ident() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.queues = ""
        self.node = ""
        self._consumer = None
        self.follow_lanes = False  # serve every lane, those created later too
        self._known: set[str] = set()  # lane queues already there (or already added)

    def live_queues(self) -> str:
        """The queues the worker consumes now (they change live with add_consumer/cancel_consumer)."""
        consumer = self._consumer
        task_consumer = getattr(consumer, "task_consumer", None) if consumer is not None else None
        if task_consumer is not None:
            return ",".join(sorted(q.name for q in task_consumer.queues))
        return self.queues

    @staticmethod
    def lane_queues() -> set[str]:
        """Every lane's queues (enabled or not: gpu_worker serves them all, so enabling one needs no restart)."""
        return {queue for lane in Lane.objects.all() for queue in lane.queues}

    def follow(self) -> list[str]:
        """Start consuming the queues of lanes that appeared since the last look; returns those added.

        Only new queues: one ops stopped consuming on this worker stays stopped. Through Celery's
        remote control, addressed to this node, since the consumer adds queues in its own event
        loop (calling it from this thread would not be safe); asking twice is harmless."""
        if not (self.follow_lanes and self.node):
            return []
        added = sorted(self.lane_queues() - self._known)
        for queue in added:
            app.control.add_consumer(queue, destination=[self.node])
            self._known.add(queue)
            log.info("consuming %s: a lane created after this worker started", queue)
        return added

    def beat(self) -> None:
        device = current_device()
        now = timezone.now()
        fields = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.live_queues()[:500],
            "node": self.node,
            "device": device.kind,
            "gpu_index": device.gpu_index,
            "last_seen": now,
        }
        Worker.objects.update_or_create(
            ident=worker_ident(),
            defaults={**fields, "stopped_at": None},
            create_defaults={**fields, "started_at": now},
        )

    def start(self, queues: str = "", consumer=None) -> None:
        """Beat once now (so no job is claimed before the worker is known), then in a thread."""
        if self._thread is not None:
            return
        self.queues = queues
        self._consumer = consumer
        self.node = getattr(consumer, "hostname", "") or ""
        self._stop.clear()
        self._known = self.lane_queues()
        self.beat()
        self._thread = threading.Thread(target=self._run, name="laneway-heartbeat", daemon=True)
        self._thread.start()
        sampling.start(worker_ident(), slots.total_running)

    def _run(self) -> None:
        while not self._stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
            try:
                self.follow()
                self.beat()
            except Exception:
                log.exception("heartbeat failed")
            finally:
                close_old_connections()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        sampling.stop()
        try:
            Worker.objects.filter(ident=worker_ident()).update(stopped_at=timezone.now())
        finally:
            close_old_connections()


heartbeat = Heartbeat()
