import pytest
from diffusers import StableDiffusionPipeline
from django.core.management import CommandError, call_command


def test_it_builds_a_pipeline_that_from_pretrained_loads(settings, tmp_path):
    settings.MODELS_ROOT = tmp_path
    call_command("build_demo_checkpoint", "tiny")
    folder = tmp_path / "tiny"
    assert (folder / "model_index.json").is_file()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.vae_scale_factor == 2 and pipe.safety_checker is None


def test_it_keeps_an_existing_checkpoint_unless_forced(settings, tmp_path, capsys):
    settings.MODELS_ROOT = tmp_path
    call_command("build_demo_checkpoint", "tiny")
    marker = tmp_path / "tiny" / "model_index.json"
    before = marker.stat().st_mtime_ns
    call_command("build_demo_checkpoint", "tiny")
    assert "already" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == before


def test_it_refuses_a_path_outside_models_root(settings, tmp_path):
    settings.MODELS_ROOT = tmp_path / "models"
    with pytest.raises(CommandError, match="outside MODELS_ROOT"):
        call_command("build_demo_checkpoint", "../escape")
    assert not (tmp_path / "escape").exists()
