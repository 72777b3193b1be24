"""What Laneway knows about each pipeline family: how to load it, what it can do, its lane defaults.

A model version names its family (registration detects it from the checkpoint's
`model_index.json`); everything family-specific (the diffusers class, the call's extra
arguments, sensible lane bounds, the memory prior) is read from here, so adding a family is
one entry. Cheap to import: it names diffusers classes, it does not import diffusers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnknownFamily(ValueError):
    """A checkpoint whose pipeline is not one Laneway serves."""


@dataclass(frozen=True)
class LaneDefaults:
    steps: int
    guidance: float
    size: int
    max_size: int
    min_size: int = 256
    max_steps: int = 80
    max_guidance: float = 20.0

    def as_lane_fields(self) -> dict[str, Any]:
        return {
            "default_steps": self.steps,
            "max_steps": self.max_steps,
            "default_guidance": self.guidance,
            "max_guidance": self.max_guidance,
            "default_width": self.size,
            "default_height": self.size,
            "min_size": self.min_size,
            "max_size": self.max_size,
        }


@dataclass(frozen=True)
class Family:
    value: str
    label: str
    pipeline: str  # the diffusers class a checkpoint of this family loads as
    text2img: bool = False
    img2img: bool = False  # can refine a cascade's draft (its own img2img, via from_pipe)
    upscale: bool = False
    lora: bool = False
    single_file: bool = False  # tested here with from_single_file(config=…)
    local: bool = True  # False: a hosted engine behind an HTTP API, no checkpoint
    # model_index.json `_class_name`s that are this family.
    index_classes: tuple[str, ...] = ()
    # Width and height must be multiples of this (VAE scale x patch size).
    size_multiple: int = 8
    defaults: LaneDefaults | None = None
    # Timestep-distilled variants (turbo, lightning, schnell): few steps, no classifier-free guidance.
    distilled_defaults: LaneDefaults | None = None
    # Extra keyword arguments of the text-to-image call.
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    distilled_call_kwargs: dict[str, Any] = field(default_factory=dict)
    # Activation bytes per output pixel per byte of dtype before anything is measured on CUDA.
    # Deliberately generous (SD 1.5 at 512x512 fp16: ~1.5 GiB); replaced by measured peaks.
    prior_bytes_per_pixel: int = 3000
    # The LoRA state dict prefix of the denoiser (diffusers' save_lora_weights format).
    lora_prefix: str = "unet"
    # Tensor-name prefixes that mark an original-format single file of this family.
    file_markers: tuple[str, ...] = ()


SD15 = Family(
    "sd15", "Stable Diffusion 1.x / 2.x", "StableDiffusionPipeline",
    text2img=True, img2img=True, lora=True, single_file=True,
    index_classes=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    file_markers=("cond_stage_model.",),
    defaults=LaneDefaults(steps=25, guidance=7.5, size=512, max_size=1024),
    distilled_defaults=LaneDefaults(steps=4, guidance=1.0, size=512, max_size=1024, max_steps=12),
)  # fmt: skip
SDXL = Family(
    "sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline",
    text2img=True, img2img=True, lora=True, single_file=True,
    index_classes=("StableDiffusionXLPipeline",),
    file_markers=("conditioner.embedders.",),
    # Micro-conditioning: SDXL was trained on ~1 megapixel buckets; far smaller sizes degrade.
    defaults=LaneDefaults(steps=30, guidance=5.0, size=1024, min_size=512, max_size=2048),
    distilled_defaults=LaneDefaults(steps=4, guidance=0.0, size=512, min_size=512, max_size=1024, max_steps=8),
)  # fmt: skip
SDXL_REFINER = Family(
    "sdxl-refiner", "SDXL refiner (img2img)", "StableDiffusionXLImg2ImgPipeline",
    img2img=True,
    index_classes=(),  # an SDXL img2img folder without the first text encoder (see detect_family)
    file_markers=("conditioner.embedders.",),
    defaults=LaneDefaults(steps=15, guidance=5.0, size=1024, min_size=512, max_size=2048),
)  # fmt: skip
SD3 = Family(
    "sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline",
    text2img=True, img2img=True, lora=True,
    index_classes=("StableDiffusion3Pipeline",),
    file_markers=("model.diffusion_model.joint_blocks.",),
    size_multiple=16,
    defaults=LaneDefaults(steps=28, guidance=7.0, size=1024, max_size=2048),
    distilled_defaults=LaneDefaults(steps=4, guidance=0.0, size=1024, max_size=2048, max_steps=8),
    call_kwargs={"max_sequence_length": 256},
    prior_bytes_per_pixel=4000,
    lora_prefix="transformer",
)  # fmt: skip
FLUX = Family(
    "flux", "Flux", "FluxPipeline",
    text2img=True, img2img=True, lora=True,
    index_classes=("FluxPipeline",),
    file_markers=("double_blocks.", "model.diffusion_model.double_blocks."),
    size_multiple=16,
    # Flux dev: guidance is distilled into the model (an embedding), not classifier-free.
    defaults=LaneDefaults(steps=28, guidance=3.5, size=1024, max_size=2048, max_guidance=10.0),
    # Flux schnell (no guidance embedding): 1-4 steps, guidance ignored, shorter prompts.
    distilled_defaults=LaneDefaults(steps=4, guidance=0.0, size=1024, max_size=2048, max_steps=8),
    call_kwargs={"max_sequence_length": 512},
    distilled_call_kwargs={"max_sequence_length": 256},
    prior_bytes_per_pixel=4000,
    lora_prefix="transformer",
)  # fmt: skip
LATENT_UPSCALER_X2 = Family(
    "latent-upscaler-x2", "Stable Diffusion latent upscaler (x2)", "StableDiffusionLatentUpscalePipeline",
    upscale=True,
    index_classes=("StableDiffusionLatentUpscalePipeline",),
)  # fmt: skip
HTTP = Family(
    "http", "Hosted engine (OpenAI Images API)", "",
    text2img=True, local=False, size_multiple=1,
    defaults=LaneDefaults(steps=1, guidance=0.0, size=1024, min_size=256, max_size=1792, max_steps=1),
)  # fmt: skip

FAMILIES: dict[str, Family] = {f.value: f for f in (SD15, SDXL, SDXL_REFINER, SD3, FLUX, LATENT_UPSCALER_X2, HTTP)}


def text2img_values() -> list[str]:
    """Families that render from a prompt: the ones a lane can serve."""
    return [f.value for f in FAMILIES.values() if f.text2img]


def get(value: str) -> Family:
    try:
        return FAMILIES[value]
    except KeyError:
        raise UnknownFamily(f"Unknown pipeline family {value!r}; one of: {', '.join(FAMILIES)}.") from None


def read_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise UnknownFamily(f"{index} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnknownFamily(f"{index} is not a JSON object.")
    return data


def detect_family(folder: Path) -> str:
    """The family of a diffusers folder, from the pipeline class its model_index.json names."""
    index = read_index(folder)
    name = index.get("_class_name")
    if name == "StableDiffusionXLImg2ImgPipeline":
        # The refiner ships without the first (CLIP-L) text encoder; an SDXL base saved as img2img has it.
        encoder = index.get("text_encoder")
        return SDXL.value if isinstance(encoder, list) and encoder and encoder[0] else SDXL_REFINER.value
    for family in FAMILIES.values():
        if name in family.index_classes:
            return family.value
    known = ", ".join(sorted(c for f in FAMILIES.values() for c in f.index_classes))
    raise UnknownFamily(
        f"{folder.name}/model_index.json names pipeline {name!r}, which is not a family Laneway serves ({known})."
    )


def file_families(keys) -> set[str]:
    """The families whose original-format tensor names appear among a single file's keys."""
    found = set()
    for key in keys:
        for family in FAMILIES.values():
            if any(key.startswith(marker) for marker in family.file_markers):
                found.add(family.value)
    return found


def detect_distilled(folder: Path, family: str) -> bool:
    """Flux schnell is told from Flux dev by its missing guidance embedding."""
    if family != FLUX.value:
        return False
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("guidance_embeds") is False


def lane_defaults(family: str, distilled: bool = False) -> LaneDefaults | None:
    spec = get(family)
    return (spec.distilled_defaults if distilled else None) or spec.defaults


def call_kwargs(family: str, distilled: bool = False) -> dict[str, Any]:
    spec = get(family)
    return {**spec.call_kwargs, **(spec.distilled_call_kwargs if distilled else {})}


def table() -> list[dict[str, Any]]:
    """What each family supports, for pages and the README."""
    return [
        {
            "family": f.value,
            "label": f.label,
            "text2img": f.text2img,
            "img2img": f.img2img,
            "upscale": f.upscale,
            "lora": f.lora,
            "single_file": f.single_file,
        }
        for f in FAMILIES.values()
    ]
