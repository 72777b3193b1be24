"""Original-format single-file checkpoints (lanes/original_format.py), loaded back with diffusers'
from_single_file and through Laneway's own registration and loading.

The demo SDXL's second text encoder is wider than its first (as in SDXL): diffusers' single-file
reader tells the two apart by width alone.

The single file is written from a folder built with another seed than its config folder: diffusers
loads a component it does not find in the file from the config folder's weights, silently, so a
file missing a component would otherwise pass for a good one.
"""

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from lanes import checkpoints
from lanes.changes import ControlError
from lanes.engines import Device, load_pipeline
from lanes.models import ModelVersion
from lanes.original_format import save_single_file
from lanes.registry import register_version

PIPELINES = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
COMPONENTS = {"sd15": ("unet", "vae", "text_encoder"), "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}
CPU = Device("cpu", None)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    """Per family: a config folder (base, seed 0), the folder the single file is written from
    (source, seed 1) and the single file (single/model.safetensors)."""
    root = tmp_path_factory.mktemp("models")
    for family in PIPELINES:
        checkpoints.build_demo_checkpoint(root / family / "base", seed=0, family=family)
        source = checkpoints.build_demo_checkpoint(root / family / "source", seed=1, family=family)
        save_single_file(source, root / family / "single" / "model.safetensors", family)
    return root


def assert_same_weights(loaded, reference, components):
    for name in components:
        expected, actual = getattr(reference, name).state_dict(), getattr(loaded, name).state_dict()
        assert actual.keys() == expected.keys(), name
        differing = [key for key, t in expected.items() if actual[key].is_meta or not torch.equal(actual[key], t)]
        assert differing == [], f"{name}: {len(differing)} of {len(expected)} tensors differ, e.g. {differing[:3]}"


def assert_other_weights(loaded, reference, components):
    for name in components:
        expected, actual = getattr(reference, name).state_dict(), getattr(loaded, name).state_dict()
        assert not all(torch.equal(actual[key], t) for key, t in expected.items()), name


def render(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(0)
    out = pipe("a red square", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np")
    return out.images


@pytest.mark.parametrize("family", PIPELINES)
def test_from_single_file_loads_the_weights_and_renders_the_images_of_the_folder(models_root, family):
    cls = PIPELINES[family]
    file, config = models_root / family / "single" / "model.safetensors", models_root / family / "base"
    single = cls.from_single_file(str(file), config=str(config), local_files_only=True)
    folder = cls.from_pretrained(models_root / family / "source", local_files_only=True)
    assert_same_weights(single, folder, COMPONENTS[family])
    assert_other_weights(single, cls.from_pretrained(config, local_files_only=True), COMPONENTS[family])
    assert np.array_equal(render(single), render(folder))


def test_the_file_holds_the_original_key_layout(models_root):
    from safetensors import safe_open

    shapes = {}
    for family in PIPELINES:
        with safe_open(models_root / family / "single" / "model.safetensors", framework="pt") as handle:
            shapes[family] = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    sd15, sdxl = shapes["sd15"], shapes["sdxl"]
    # One layer per block: the second down block starts at input_blocks.3; the first up block has
    # attention, so its upsampler follows it at index 2.
    assert sd15["model.diffusion_model.input_blocks.3.1.proj_in.weight"] == (64, 64, 1, 1)
    assert sd15["model.diffusion_model.input_blocks.2.0.op.weight"] == (32, 32, 3, 3)
    assert sd15["model.diffusion_model.output_blocks.1.2.conv.weight"] == (64, 64, 3, 3)
    assert sd15["model.diffusion_model.output_blocks.0.0.skip_connection.weight"] == (64, 128, 1, 1)
    assert sd15["first_stage_model.decoder.mid.attn_1.q.weight"] == (64, 64, 1, 1)
    assert sd15["first_stage_model.decoder.up.1.upsample.conv.weight"] == (64, 64, 3, 3)
    assert sd15["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] == (77, 32)
    assert sdxl["model.diffusion_model.label_emb.0.0.weight"] == (128, 80)
    assert sdxl["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] == (32,)
    assert sdxl["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"] == (3 * 64, 64)
    assert sdxl["conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_fc.weight"] == (37, 64)
    assert sdxl["conditioner.embedders.1.model.text_projection"] == (64, 32)
    assert sdxl["conditioner.embedders.1.model.positional_embedding"] == (77, 64)
    diffusers_names = (
        r"down_blocks|mid_block|up_blocks|resnets|first_stage_model\..*\.to_q|embedders\.1\..*(self_attn|layer_norm)"
    )
    assert [key for key in sd15.keys() | sdxl.keys() if re.search(diffusers_names, key)] == []


def test_it_refuses_a_family_without_a_single_file_layout(tmp_path):
    with pytest.raises(ValueError, match="family 'flux'.*sd15, sdxl"):
        save_single_file(tmp_path, tmp_path / "model.safetensors", "flux")


@pytest.mark.django_db
@pytest.mark.parametrize("family", PIPELINES)
def test_laneway_registers_and_loads_a_single_file_with_its_config_folder(settings, models_root, family):
    settings.MODELS_ROOT = models_root
    version = register_version(
        None, name="x", location=f"{family}/single/model.safetensors", config_location=f"{family}/base", validate=False
    )
    version.refresh_from_db()
    assert version.family == family
    pipe = load_pipeline(version, CPU)
    assert type(pipe) is PIPELINES[family]
    folder = PIPELINES[family].from_pretrained(models_root / family / "source", local_files_only=True)
    assert_same_weights(pipe, folder, COMPONENTS[family])


@pytest.mark.django_db
def test_a_single_file_without_a_config_folder_is_refused_at_registration(settings, models_root):
    settings.MODELS_ROOT = models_root
    with pytest.raises(ControlError) as caught:
        register_version(None, name="x", location="sd15/single/model.safetensors", validate=False)
    assert "sd15/single/model.safetensors needs a config folder" in caught.value.errors["config_location"]
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_config_folder_of_another_family_is_refused_at_registration_naming_both(settings, models_root):
    settings.MODELS_ROOT = models_root
    with pytest.raises(ControlError) as caught:
        register_version(
            None, name="x", location="sd15/single/model.safetensors", config_location="sdxl/base", validate=False
        )
    assert caught.value.errors["config_location"] == (
        "model.safetensors is a Stable Diffusion 1.x / 2.x checkpoint, but its config folder sdxl/base is "
        "Stable Diffusion XL."
    )
    with pytest.raises(ControlError) as caught:
        register_version(
            None, name="x", location="sdxl/single/model.safetensors", config_location="sd15/base", validate=False
        )
    assert "model.safetensors is a Stable Diffusion XL checkpoint" in caught.value.errors["config_location"]
    assert not ModelVersion.objects.exists()
