from datetime import timedelta
from types import SimpleNamespace

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from console.asgi import application
from telemetry.models import GpuSample
from telemetry.nvml import Sampler
from telemetry.sampling import SamplingLoop
from telemetry.tasks import prune_samples
from tests.conftest import session_headers, wait_until


def test_without_a_driver_the_sampler_reports_the_worker_process():
    # The real path on this machine: no NVIDIA driver, so NVML fails to load.
    sampler = Sampler()
    assert not sampler.has_gpu and "NVMLError" in sampler.error
    (reading,) = sampler.read()
    assert reading["gpu_index"] is None and reading["name"] == "CPU"
    assert reading["memory_used_bytes"] > 0 and reading["memory_total_bytes"] > reading["memory_used_bytes"]


@pytest.fixture
def fake_nvml(monkeypatch):
    """Stand-in for the NVIDIA driver, which cannot exist here: only the pynvml calls the sampler makes."""
    import pynvml

    devices = {0: ("NVIDIA H100 80GB HBM3", 37, 12 << 30), 1: ("NVIDIA H100 80GB HBM3", 91, 70 << 30)}
    fakes = {
        "nvmlInit": lambda: None,
        "nvmlDeviceGetCount": lambda: len(devices),
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda h: devices[h][0],
        "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=devices[h][1], memory=0),
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=devices[h][2], total=80 << 30, free=0),
        "nvmlDeviceGetTemperature": lambda h, sensor: 40 + h,
        "nvmlDeviceGetPowerUsage": lambda h: 250_000 + h * 100_000,
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(pynvml, name, fake)
    return devices


def test_with_nvml_it_reads_each_visible_gpu(fake_nvml, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    readings = Sampler().read()
    assert [
        (r["gpu_index"], r["utilization_pct"], r["memory_used_bytes"] >> 30, r["temperature_c"], r["power_w"])
        for r in readings
    ] == [
        (0, 37.0, 12, 40.0, 250.0),
        (1, 91.0, 70, 41.0, 350.0),
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [r["gpu_index"] for r in Sampler().read()] == [1]


@pytest.mark.django_db(transaction=True)
def test_a_tick_stores_samples_and_pushes_a_typed_event(fake_nvml, client, ops_user, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    headers = session_headers(client, ops_user)

    async def scenario():
        communicator = WebsocketCommunicator(application, "/ws/telemetry/", headers=headers)
        assert (await communicator.connect())[0]
        snapshot = await communicator.receive_json_from(timeout=5)
        from asgiref.sync import sync_to_async

        await sync_to_async(SamplingLoop().tick)("gpu-host:1", lambda: 3)
        event = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return snapshot, event

    snapshot, event = async_to_sync(scenario)()
    assert snapshot == {"type": "telemetry.snapshot", "samples": []}
    assert event["type"] == "gpu.sample" and event["worker"] == "gpu-host:1" and event["running_jobs"] == 3
    assert [(g["gpu_index"], g["utilization_pct"]) for g in event["gpus"]] == [(0, 37.0), (1, 91.0)]
    assert GpuSample.objects.filter(worker="gpu-host:1").count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_telemetry_socket_refuses_anonymous_and_creatives_and_sends_ops_current_readings(
    client, creative, ops_user
):
    GpuSample.objects.create(
        worker="w:1", gpu_index=0, utilization_pct=10, taken_at=timezone.now() - timedelta(seconds=5)
    )
    GpuSample.objects.create(worker="w:1", gpu_index=0, utilization_pct=55)

    async def scenario(headers):
        communicator = WebsocketCommunicator(application, "/ws/telemetry/", headers=headers)
        connected, _ = await communicator.connect()
        snapshot = await communicator.receive_json_from(timeout=5) if connected else None
        await communicator.disconnect()
        return connected, snapshot

    assert async_to_sync(scenario)([(b"origin", b"http://localhost")]) == (False, None)
    assert async_to_sync(scenario)(session_headers(client, creative)) == (False, None)
    connected, snapshot = async_to_sync(scenario)(session_headers(client, ops_user))
    assert connected and [s["gpus"][0]["utilization_pct"] for s in snapshot["samples"]] == [55.0]


@pytest.mark.django_db
def test_old_samples_are_pruned_in_batches(settings):
    now = timezone.now()
    old = now - timedelta(seconds=settings.TELEMETRY_RETENTION_SECONDS + 10)
    GpuSample.objects.bulk_create([GpuSample(worker="w", taken_at=old) for _ in range(7)])
    GpuSample.objects.create(worker="w", taken_at=now)
    assert prune_samples() == 7
    assert GpuSample.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_samples_itself(worker):
    from lanes.heartbeat import worker_ident

    sample = wait_until(
        lambda: GpuSample.objects.filter(worker=worker_ident()).first(), what="no sample from the worker"
    )
    assert sample.gpu_index is None and sample.memory_used_bytes > 0  # CPU-only here


def test_without_a_gpu_utilisation_is_the_worker_processs_own_cpu_not_the_machines():
    import subprocess
    import sys
    import time

    import psutil

    sampler = Sampler()
    sampler.read()  # starts the measurement
    # Another process keeps a core busy while this one sleeps: an idle worker reads (close to) zero.
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass"]
    )
    try:
        time.sleep(0.5)
        (idle,) = sampler.read()
        wall, cpu = time.perf_counter(), time.process_time()  # the next reading's window starts here
    finally:
        busy.wait()
    assert idle["utilization_pct"] < 10

    # This process burns CPU itself: the reading follows its own CPU time, as a share of every core.
    while time.process_time() - cpu < 0.3:
        pass
    (working,) = sampler.read()
    expected = 100 * (time.process_time() - cpu) / (time.perf_counter() - wall) / psutil.cpu_count()
    # The same window as the sampler's (it starts at the idle reading), so only the scheduling of a
    # loaded machine separates the two figures.
    assert working["utilization_pct"] == pytest.approx(expected, rel=0.3, abs=5)
