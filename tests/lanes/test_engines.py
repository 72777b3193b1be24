import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from django.conf import settings

from lanes.engines import EngineCache, MemoryBudgetError, load_pipeline
from lanes.engines import current_device as device
from lanes.models import CheckpointError, ModelVersion, hash_checkpoint, resolve_checkpoint


def version(location: str, **fields) -> ModelVersion:
    return ModelVersion(**{"name": "v", "location": location, "content_hash": "x", "pk": 1, **fields})


def test_a_path_outside_models_root_is_refused(settings, tmp_path):
    settings.MODELS_ROOT = tmp_path / "models"
    settings.MODELS_ROOT.mkdir()
    with pytest.raises(CheckpointError, match="outside MODELS_ROOT"):
        resolve_checkpoint("../elsewhere")
    with pytest.raises(CheckpointError, match="outside MODELS_ROOT"):
        resolve_checkpoint("/etc")


def test_a_link_inside_a_checkpoint_folder_must_stay_under_models_root(settings, tmp_path):
    settings.MODELS_ROOT = tmp_path / "models"
    folder = settings.MODELS_ROOT / "linked"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    shared = settings.MODELS_ROOT / "shared.safetensors"
    shared.write_bytes(b"weights")
    (folder / "unet" / "inside.safetensors").symlink_to(shared)  # a link within MODELS_ROOT is fine
    assert resolve_checkpoint("linked") == folder.resolve()
    secret = tmp_path / "hostname"
    secret.write_text("not weights")
    (folder / "unet" / "outside-link").symlink_to(secret)
    with pytest.raises(CheckpointError, match="unet/outside-link links outside MODELS_ROOT"):
        resolve_checkpoint("linked")
    (folder / "unet" / "outside-link").unlink()
    (folder / "dangling").symlink_to(settings.MODELS_ROOT / "gone")
    with pytest.raises(CheckpointError, match="dangling links outside MODELS_ROOT"):
        resolve_checkpoint("linked")


def test_a_missing_checkpoint_is_refused(settings):
    with pytest.raises(CheckpointError, match="does not exist under MODELS_ROOT"):
        resolve_checkpoint("no-such-model")


def test_a_folder_without_model_index_is_refused(settings):
    (Path(settings.MODELS_ROOT) / "empty-folder").mkdir(parents=True, exist_ok=True)
    with pytest.raises(CheckpointError, match="no model_index.json"):
        resolve_checkpoint("empty-folder")


def test_a_file_that_is_not_safetensors_is_refused(settings):
    path = Path(settings.MODELS_ROOT) / "weights.ckpt"
    path.write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="not a .safetensors file"):
        resolve_checkpoint("weights.ckpt")


def test_a_corrupt_checkpoint_is_refused_with_the_loader_error(settings, demo_checkpoint):
    corrupt = Path(settings.MODELS_ROOT) / "corrupt-sd"
    shutil.rmtree(corrupt, ignore_errors=True)
    shutil.copytree(demo_checkpoint, corrupt)
    weights = next((corrupt / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(CheckpointError, match="corrupt-sd.*could not be loaded"):
        load_pipeline(version("corrupt-sd"), device())


def test_a_single_file_checkpoint_without_configs_is_refused(settings):
    (Path(settings.MODELS_ROOT) / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="needs a config folder"):
        load_pipeline(version("model.safetensors"), device())


def test_the_demo_checkpoint_loads_with_from_pretrained_and_is_reproducible(demo_checkpoint):
    with EngineCache(budget_bytes=None).use(
        version(demo_checkpoint.name, content_hash=hash_checkpoint(demo_checkpoint)), width=64, height=48
    ) as engine:
        pass
    steps_seen = []
    first = engine.run(prompt="red", seed=11, width=64, height=48, steps=3, guidance=7.5, on_step=steps_seen.append)
    second = engine.run(prompt="red", seed=11, width=64, height=48, steps=3, guidance=7.5)
    third = engine.run(prompt="red", seed=12, width=64, height=48, steps=3, guidance=7.5)
    assert first.image.size == (64, 48)
    assert steps_seen == [1, 2, 3]
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(third.image))
    # On CPU: CPU-seconds are the device time, and the peak is the RSS the call added, not the process's.
    assert first.gpu_seconds == first.run_seconds > 0
    assert 0 <= first.peak_memory_bytes < psutil.Process().memory_info().rss


RSS_PEAK_SCRIPT = """
import sys, time, django, numpy as np, psutil
django.setup()
from lanes.engines import RssPeak
process = psutil.Process()
if sys.argv[1] == "sampler":
    RssPeak._kernel_mark = False  # as where the high-water mark cannot be reset
with RssPeak(process) as peak:
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, written, so resident
    time.sleep(float(sys.argv[2]))
    del block
    if sys.argv[1] == "overlapping":
        # Another job's call, started after that peak and ended meanwhile: the peak is still this block's,
        # and not the other one's.
        with RssPeak(process) as later:
            pass
with RssPeak(process) as idle:
    time.sleep(0.05)
print(RssPeak._kernel_mark, peak.rise, later.rise if sys.argv[1] == "overlapping" else idle.rise)
"""


def rss_peak(mode: str, alive_s: float) -> tuple[str, int, int]:
    # In a process of its own: in the test run's process, other tests' threads free memory meanwhile.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    out = subprocess.run([sys.executable, "-c", RSS_PEAK_SCRIPT, mode, str(alive_s)], env=env, cwd=settings.BASE_DIR,
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    kernel, rise, idle = out.stdout.split()
    return kernel, int(rise), int(idle)


KERNEL_MARK = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="no resettable RSS high-water mark here (Linux only)"
)


@KERNEL_MARK
def test_the_cpu_peak_is_how_far_the_process_rss_rose_while_the_block_ran():
    # Linux's high-water mark: the 64 MiB are seen though freed at once, before any sampler could look.
    kernel, rise, idle = rss_peak("kernel", 0.0)
    assert kernel == "True"
    assert rise >= 60 << 20
    assert idle < 16 << 20


@KERNEL_MARK
def test_a_call_starting_while_another_runs_neither_hides_nor_inherits_the_first_ones_peak():
    kernel, rise, later = rss_peak("overlapping", 0.0)
    assert kernel == "True" and rise >= 60 << 20
    assert later < 16 << 20


def test_where_the_mark_cannot_be_reset_a_thread_samples_the_rss():
    kernel, rise, idle = rss_peak("sampler", 0.2)  # alive across many samples
    assert kernel == "False"
    assert rise >= 60 << 20
    assert idle < 16 << 20


def test_the_engine_cache_loads_a_version_once(demo_checkpoint):
    cache = EngineCache(budget_bytes=None)
    v = version(demo_checkpoint.name, content_hash="abc")
    with cache.use(v, width=64, height=64) as first, cache.use(v, width=64, height=64) as second:
        assert first is second and first.in_use == 2
    with cache.use(version(demo_checkpoint.name, content_hash="changed"), width=64, height=64) as changed:
        assert changed is not first
    assert len(cache.loaded()) == 2


@pytest.fixture
def two_versions(settings, demo_checkpoint):
    """Two model versions on two copies of the demo checkpoint: two sets of weights."""
    copy = Path(settings.MODELS_ROOT) / "demo-copy"
    if not copy.exists():
        shutil.copytree(demo_checkpoint, copy)
    a = ModelVersion(pk=101, name="a", location=demo_checkpoint.name, content_hash="a")
    b = ModelVersion(pk=102, name="b", location="demo-copy", content_hash="b")
    return a, b


def test_a_budget_too_small_for_two_pipelines_evicts_the_idle_one(two_versions):
    a, b = two_versions
    with EngineCache(budget_bytes=None).use(a, width=64, height=64) as probe:
        one = probe.weights_bytes + probe.activation_bytes(64, 64)
        # Room for one pipeline and its activations, not for a second set of weights.
        budget = one + probe.weights_bytes // 2
    cache = EngineCache(budget_bytes=budget)
    for _ in range(2):
        for v in (a, b):
            with cache.use(v, width=64, height=64) as engine:
                engine.run(prompt="x", seed=1, width=64, height=64, steps=1, guidance=1.0)
            assert cache.loaded() == [engine.key]
            assert cache.used_bytes() <= cache.budget
    assert cache.evictions == 3


def test_a_job_waits_for_memory_held_by_a_running_job(two_versions):
    import threading

    a, b = two_versions
    with EngineCache(budget_bytes=None).use(a, width=64, height=64) as probe:
        budget = probe.weights_bytes + probe.activation_bytes(64, 64) + probe.weights_bytes // 2
    cache = EngineCache(budget_bytes=budget)
    order = []
    with cache.use(a, width=64, height=64):
        waiter = threading.Thread(target=lambda: cache.use(b, width=64, height=64).__enter__() and order.append("b"))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # b cannot load while a runs: it waits, it does not crash
        order.append("a done")
    waiter.join(30)
    assert order == ["a done", "b"]


def test_components_shared_between_pipelines_count_once(demo_checkpoint):
    from lanes.engines import Engine

    cache = EngineCache(budget_bytes=None)
    with cache.use(version(demo_checkpoint.name), width=64, height=64) as engine:
        pass
    total = cache.weights_bytes()
    assert total == engine.weights_bytes > 0
    # A second pipeline built from the same components (as img2img is) adds nothing.
    cache._engines["img2img"] = Engine("img2img", engine.pipe, engine.device)
    assert cache.weights_bytes() == total


def test_a_job_that_can_never_fit_is_refused_with_the_numbers(demo_checkpoint):
    cache = EngineCache(budget_bytes=1024)
    with pytest.raises(MemoryBudgetError, match=r"needs about .* MiB of weights; the budget is 0 MiB"):
        with cache.use(version(demo_checkpoint.name), width=64, height=64):
            pass
    with EngineCache(budget_bytes=None).use(version(demo_checkpoint.name), width=64, height=64) as probe:
        weights = probe.weights_bytes
    small = EngineCache(budget_bytes=weights + 1024 * 1024)
    with pytest.raises(MemoryBudgetError, match=r"A 1024x1024 batch of 4 needs about"):
        with small.use(version(demo_checkpoint.name), width=1024, height=1024, batch=4):
            pass
    with small.use(version(demo_checkpoint.name), width=8, height=8) as engine:
        assert engine.in_use == 1


def test_the_checkpoint_hash_covers_every_file(demo_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_checkpoint, copy)
    assert hash_checkpoint(copy) == hash_checkpoint(demo_checkpoint)
    config = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    config["steps_offset"] = 0
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert hash_checkpoint(copy) != hash_checkpoint(demo_checkpoint)


def test_concurrent_calls_on_one_engine_with_prompts_of_different_lengths(demo_checkpoint):
    import threading

    with EngineCache(budget_bytes=None).use(version(demo_checkpoint.name), width=32, height=32) as engine:
        image = engine.run(prompt="warm", seed=1, width=16, height=16, steps=1, guidance=1.0).image
        start, errors = threading.Barrier(16), []

        def one(i: int) -> None:
            start.wait()
            try:
                for _ in range(3):
                    # A batch of prompts of different lengths needs the tokenizer's padding on.
                    engine.refine(
                        prompts=["a", "a longer prompt " * (i + 1)], images=[image, image], seeds=[i, i],
                        steps=2, strength=1.0, guidance=7.5,
                    )  # fmt: skip
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []
