"""The worker's sampling loop: read the GPUs every TELEMETRY_SAMPLE_SECONDS, store and push the readings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from . import push
from .models import GpuSample
from .nvml import Sampler

log = logging.getLogger(__name__)


class SamplingLoop:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.sampler: Sampler | None = None

    def tick(self, worker: str, running: Callable[[], int]) -> list[GpuSample]:
        if self.sampler is None:
            self.sampler = Sampler()
        now = timezone.now()
        jobs = running()
        rows = GpuSample.objects.bulk_create(
            [GpuSample(worker=worker, taken_at=now, running_jobs=jobs, **reading) for reading in self.sampler.read()]
        )
        push.gpu_samples(worker, rows)
        return rows

    def start(self, worker: str, running: Callable[[], int]) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(settings.TELEMETRY_SAMPLE_SECONDS):
                try:
                    self.tick(worker, running)
                except Exception:
                    log.exception("telemetry sample failed")
                finally:
                    close_old_connections()

        self._thread = threading.Thread(target=loop, name="laneway-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None


sampling = SamplingLoop()
