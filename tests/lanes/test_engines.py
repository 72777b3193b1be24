import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lanes.engines import EngineCache, load_pipeline
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
    engine = EngineCache().get(version(demo_checkpoint.name, content_hash=hash_checkpoint(demo_checkpoint)))
    steps_seen = []
    first = engine.run(prompt="red", seed=11, width=64, height=48, steps=3, guidance=7.5, on_step=steps_seen.append)
    second = engine.run(prompt="red", seed=11, width=64, height=48, steps=3, guidance=7.5)
    third = engine.run(prompt="red", seed=12, width=64, height=48, steps=3, guidance=7.5)
    assert first.image.size == (64, 48)
    assert steps_seen == [1, 2, 3]
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(third.image))
    assert first.gpu_seconds == 0.0 and first.peak_memory_bytes > 0


def test_the_engine_cache_loads_a_version_once(demo_checkpoint):
    cache = EngineCache()
    v = version(demo_checkpoint.name, content_hash="abc")
    assert cache.get(v) is cache.get(v)
    assert cache.get(version(demo_checkpoint.name, content_hash="changed")) is not cache.get(v)


def test_the_checkpoint_hash_covers_every_file(demo_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_checkpoint, copy)
    assert hash_checkpoint(copy) == hash_checkpoint(demo_checkpoint)
    config = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    config["steps_offset"] = 0
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert hash_checkpoint(copy) != hash_checkpoint(demo_checkpoint)
