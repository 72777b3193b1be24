"""GPU readings through NVML (nvidia-ml-py, imported as pynvml), or the worker process itself without a driver
(its own CPU share and RSS).

Only utilisation, memory, temperature and power are read: microseconds per call, fine at
1-2 Hz. Process lists are never polled here (expensive, and the worker knows its jobs).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .events import GpuReading

log = logging.getLogger(__name__)


class Sampler:
    """Reads this worker's GPUs (those in CUDA_VISIBLE_DEVICES, or all); CPU and RSS when NVML is absent."""

    def __init__(self) -> None:
        self._process: Any = None  # psutil.Process of this worker, kept: its CPU % is measured between reads
        self.nvml = None
        self.error = ""
        self.handles: list[tuple[int, object, str]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
            indices = [int(v) for v in visible if v.isdigit()] or list(range(pynvml.nvmlDeviceGetCount()))
            for index in indices:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                self.handles.append((index, handle, name.decode() if isinstance(name, bytes) else name))
            self.nvml = pynvml
        except Exception as exc:  # NVMLError_LibraryNotFound (no driver), NVMLError_DriverNotLoaded, ...
            self.error = f"{type(exc).__name__}: {exc}"
            log.info("no GPU telemetry (%s): reporting the worker process instead", self.error)

    @property
    def has_gpu(self) -> bool:
        return self.nvml is not None and bool(self.handles)

    def read(self) -> list[GpuReading]:
        nvml, readings = self.nvml, []
        if nvml is None or not self.handles:  # not has_gpu, spelled out so that nvml is known to be set
            return [self._process_reading()]
        for index, handle, name in self.handles:
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            readings.append(
                GpuReading(
                    gpu_index=index,
                    name=name,
                    utilization_pct=float(utilization.gpu),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    temperature_c=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                    power_w=nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                )
            )
        return readings

    def _process_reading(self) -> GpuReading:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(interval=None)  # the first call only starts the measurement
        process = self._process
        return GpuReading(
            gpu_index=None,
            name="CPU",
            # This worker's own CPU since the last read, as a share of all cores: the whole machine's
            # figure would show other processes' work as this worker's.
            utilization_pct=process.cpu_percent(interval=None) / (psutil.cpu_count() or 1),
            memory_used_bytes=process.memory_info().rss,
            memory_total_bytes=psutil.virtual_memory().total,
            temperature_c=None,
            power_w=None,
        )
