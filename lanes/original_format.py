"""Writing a diffusers folder as one original-format .safetensors file, the kind a user downloads.

Model hubs mostly publish Stable Diffusion 1.x and SDXL checkpoints as one file in the original
Stability/CompVis ("ldm") key layout, which Laneway loads with diffusers' `from_single_file` and
a local config folder. No such file can be downloaded here, so demos and tests make one from a
(tiny, random-weight) diffusers folder with `save_single_file` and load it back the way a user's
download is loaded. It is not a step of serving: Laneway never converts a user's checkpoint.

The key renaming follows diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`
and `scripts/convert_diffusers_to_original_sdxl.py`, whose tables hard-code the shapes of the
released models (4 UNet blocks for SD 1.x and 3 for SDXL, 2 layers each, which of them have
attention, 4 VAE blocks). Here the indexes are computed from the folder's own configs and weights,
as diffusers' reader (`loaders/single_file_utils.py: convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`) does in the other direction; the tiny demo UNets have 1 layer a block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

StateDict = dict[str, "Tensor"]

# The diffusers components each family's single file holds, and the prefix of each in the file.
UNET, VAE = "model.diffusion_model.", "first_stage_model."
TEXT_ENCODERS = {
    "sd15": {"text_encoder": "cond_stage_model.transformer."},
    "sdxl": {
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
}
SUPPORTED = tuple(TEXT_ENCODERS)

# The names below are those of diffusers' conversion scripts (Apache-2.0, the HuggingFace team):
# scripts/convert_diffusers_to_original_stable_diffusion.py and convert_diffusers_to_original_sdxl.py.

# ResNet blocks: diffusers module names -> original ones.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    # SDXL's micro-conditioning (add_embedding) and class-conditioned UNets both live in label_emb.
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.weight": "label_emb.weight",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# OpenCLIP (SDXL's second text encoder) names, applied in order to a CLIP key.
_OPEN_CLIP = [
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
    (".self_attn.", ".attn."),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
]


def save_single_file(folder: Path, target: Path, family: str) -> Path:
    """Write the UNet, VAE and text encoder(s) of the diffusers `folder` (family "sd15" or "sdxl") as
    one original-format .safetensors file at `target`. Tokenizers and scheduler stay in the folder:
    `from_single_file(target, config=folder)` reads them from there."""
    from safetensors.torch import save_file  # imports torch: seconds

    if family not in TEXT_ENCODERS:
        raise ValueError(f"No single-file layout for family {family!r}; one of: {', '.join(SUPPORTED)}.")
    unet_config, unet = _component(folder, "unet")
    vae_config, vae = _component(folder, "vae")
    state = _prefixed(UNET, _convert_unet(unet, unet_config))
    state |= _prefixed(VAE, _convert_vae(vae, vae_config))
    for name, prefix in TEXT_ENCODERS[family].items():
        _, encoder = _component(folder, name)
        encoder = _with_text_model_prefix(encoder)
        converted = _convert_open_clip(encoder) if prefix.endswith(".model.") else encoder
        state |= _prefixed(prefix, converted)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(target), metadata={"format": "pt"})
    return target


def _component(folder: Path, name: str) -> tuple[dict, StateDict]:
    """A component's config and weights, as saved by save_pretrained (one file or shards, safetensors)."""
    from safetensors.torch import load_file  # imports torch: seconds

    sub = folder / name
    config_file = sub / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no {name}/config.json: not a diffusers folder of this family.")
    # Variants ("diffusion_pytorch_model.fp16.safetensors") sit beside the full-precision weights.
    indexes = [f for f in sub.glob("*.safetensors.index.json") if f.name.count(".") == 3]
    if indexes:
        files = sorted({sub / shard for shard in json.loads(indexes[0].read_text())["weight_map"].values()})
    else:
        files = [f for f in sub.glob("*.safetensors") if f.name.count(".") == 1]
    if len(files) != 1 and not indexes:
        raise ValueError(f"{sub} holds no single .safetensors weights file (found: {[f.name for f in files]}).")
    weights: StateDict = {}
    for file in files:
        weights |= load_file(str(file))
    return json.loads(config_file.read_text()), weights


def _prefixed(prefix: str, state: StateDict) -> StateDict:
    return {prefix + key: tensor for key, tensor in state.items()}


def _rename(state: StateDict, rules: list[tuple[str, Callable[[re.Match], str]]], what: str) -> StateDict:
    """Each key renamed by the first rule whose pattern matches it whole; a key no rule knows is an error,
    not a tensor silently left out of the file (the loader would leave that weight random)."""
    compiled = [(re.compile(pattern), rename) for pattern, rename in rules]
    renamed: StateDict = {}
    for key, tensor in state.items():
        for pattern, rename in compiled:
            if match := pattern.fullmatch(key):
                renamed[rename(match)] = tensor
                break
        else:
            raise ValueError(f"No original-format name for {what} weight {key!r}.")
    return renamed


def _layers_per_block(config: dict, what: str) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):  # diffusers' reader, too, computes indexes from a single number
        raise ValueError(f"The {what} has per-block layer counts {layers!r}; the original layout needs one number.")
    return layers


def _convert_unet(state: StateDict, config: dict) -> StateDict:
    # Original UNets number their blocks flat: input_blocks.0 is conv_in, then per down block its
    # `layers` (resnet, attention) pairs and a downsampler; output_blocks hold `layers + 1` per up
    # block, the last of which also carries the upsampler (after the attention, where there is one).
    step = _layers_per_block(config, "UNet") + 1
    up_with_attention = {int(key.split(".")[1]) for key in state if re.match(r"up_blocks\.\d+\.attentions\.", key)}

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        return f"{_UNET_RESNET.get(head, head)}.{tail}"

    def down(m: re.Match) -> int:  # (block, layer) -> input_blocks index
        return 1 + int(m[1]) * step + int(m[2])

    def up(m: re.Match) -> int:  # (block, layer) -> output_blocks index
        return int(m[1]) * step + int(m[2])

    def downsampler(m: re.Match) -> str:  # after the block's layers
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"

    def upsampler(m: re.Match) -> str:  # with the block's last layer
        block = int(m[1])
        return f"output_blocks.{block * step + step - 1}.{2 if block in up_with_attention else 1}.{m[2]}"

    top = "|".join(re.escape(key) for key in _UNET_TOP)
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (rf"({top})(.*)", lambda m: _UNET_TOP[m[1]] + m[2]),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"input_blocks.{down(m)}.0.{resnet(m[3])}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda m: f"input_blocks.{down(m)}.1.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", downsampler),
        (r"mid_block\.resnets\.(\d+)\.(.+)", lambda m: f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"output_blocks.{up(m)}.0.{resnet(m[3])}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda m: f"output_blocks.{up(m)}.1.{m[3]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", upsampler),
    ]  # fmt: skip
    return _rename(state, rules, "UNet")


def _convert_vae(state: StateDict, config: dict) -> StateDict:
    # The original decoder numbers its up blocks from the bottom (up.0 is the last to run).
    last = len(config["up_block_types"]) - 1

    def up(m: re.Match) -> int:
        return last - int(m[1])

    def attention(m: re.Match) -> str:
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"

    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"(encoder|decoder)\.conv_norm_out\.(.+)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"(encoder|decoder)\.(conv_in|conv_out)\.(.+)", lambda m: m[0]),
        (r"(quant_conv|post_quant_conv)\.(.+)", lambda m: m[0]),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", lambda m: f"encoder.down.{m[1]}.downsample.{m[2]}"),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"decoder.up.{up(m)}.block.{m[2]}.{m[3]}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", lambda m: f"decoder.up.{up(m)}.upsample.{m[2]}"),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", attention),
    ]  # fmt: skip
    renamed = _rename(state, rules, "VAE")
    # The original mid-block attention is made of 1x1 convolutions where diffusers has linear layers.
    renamed = {
        key: tensor[:, :, None, None] if ".mid.attn_1." in key and tensor.ndim == 2 else tensor
        for key, tensor in renamed.items()
    }
    return {key.replace("conv_shortcut", "nin_shortcut"): tensor for key, tensor in renamed.items()}


def _with_text_model_prefix(state: StateDict) -> StateDict:
    # transformers >= 5.6 saves CLIPTextModel without its `text_model.` wrapper (CLIPTextModelWithProjection
    # keeps it); the original layout, and diffusers' reader, name every weight under it.
    return {
        key if key.startswith("text_model.") or key.startswith("text_projection") else f"text_model.{key}": tensor
        for key, tensor in state.items()
    }


def _convert_open_clip(state: StateDict) -> StateDict:
    import torch  # seconds to import

    converted: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        if match := re.fullmatch(r"(.+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            # OpenCLIP fuses the query, key and value projections (in that order) into one.
            qkv.setdefault(f"{match[1]}.self_attn.in_proj_{match[3]}", {})[match[2]] = tensor
            continue
        if key == "text_projection.weight":  # a Linear in transformers, a matrix applied as x @ P in OpenCLIP
            converted["text_projection"] = tensor.T
            continue
        for old, new in _OPEN_CLIP:
            key = key.replace(old, new)
        converted[key] = tensor
    for key, parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"The text encoder's {key} lacks one of the query, key and value projections.")
        for old, new in _OPEN_CLIP:
            key = key.replace(old, new)
        converted[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return converted
