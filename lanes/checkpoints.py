"""Tiny random-weight checkpoints of every family Laneway serves, built offline from configs.

They are saved with save_pretrained and loaded back through the same from_pretrained (or
from_single_file) path that a user's own checkpoint takes. Their images are noise; they
exist so that demos and tests exercise the real pipeline code without downloading
weights. The configs follow diffusers' own pipeline tests (`get_dummy_components`).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

# The families a demo checkpoint can be built for (lanes.models.ModelVersion.Family values).
BUILDABLE = ("sd15", "sdxl", "sdxl-refiner", "sd3", "flux")


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    # A character-level vocabulary with no merges: every printable character is a token.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.printable.strip():
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def _clip_config(hidden_size: int = 32, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=256,
        **extra,
    )


def _t5():
    """A tiny T5 encoder and a sentencepiece-free unigram tokenizer over printable ASCII."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(char, -2.0) for char in string.printable.strip()]
    pieces += [("\u2581" + char, -1.0) for char in string.printable.strip()]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    config = T5Config(
        vocab_size=len(pieces),
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval(), tokenizer


def _sd_vae(latent_channels: int = 4, flow: bool = False):
    from diffusers import AutoencoderKL

    # Two blocks: the VAE scale factor is 2, not 8.
    extra = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        **(extra if flow else {}),
    ).eval()


def _sd15():
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=_sd_vae(),
        text_encoder=CLIPTextModel(_clip_config()).eval(),
        tokenizer=_clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl_unet(time_ids: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    # Micro-conditioning: each time id is embedded in 8 dims, then joined with the pooled text (32).
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * 8 + 32,
        cross_attention_dim=cross_attention_dim,
    ).eval()


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )


def _sdxl():
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return StableDiffusionXLPipeline(
        vae=_sd_vae(),
        text_encoder=CLIPTextModel(_clip_config()).eval(),
        tokenizer=_clip_tokenizer(),
        # Wider than the first encoder, as in SDXL (768 and 1280): diffusers' single-file loader tells
        # the two apart by their width.
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(hidden_size=64, projection_dim=32)).eval(),
        tokenizer_2=_clip_tokenizer(),
        # Both encoders' hidden states, side by side: 32 + 64.
        unet=_sdxl_unet(time_ids=6, cross_attention_dim=96),
        scheduler=_sdxl_scheduler(),
    )


def _sdxl_refiner():
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    # The refiner reads only the second text encoder and adds an aesthetic score (5 time ids).
    return StableDiffusionXLImg2ImgPipeline(
        vae=_sd_vae(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection_dim=32)).eval(),
        tokenizer_2=_clip_tokenizer(),
        unet=_sdxl_unet(time_ids=5, cross_attention_dim=32),
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    t5, t5_tokenizer = _t5()
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=64,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_sd_vae(flow=True),
        text_encoder=CLIPTextModelWithProjection(_clip_config(projection_dim=32)).eval(),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection_dim=32)).eval(),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )


def _flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    t5, t5_tokenizer = _t5()
    # Latents are packed 2x2: 4 latent channels become 16 transformer input channels.
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    return FluxPipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=_sd_vae(flow=True),
        text_encoder=CLIPTextModel(_clip_config()).eval(),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
    )


_BUILDERS = {"sd15": _sd15, "sdxl": _sdxl, "sdxl-refiner": _sdxl_refiner, "sd3": _sd3, "flux": _flux}


def build_demo_checkpoint(path: Path, seed: int = 0, family: str = "sd15") -> Path:
    """Build a tiny random-weight pipeline of the family and save it at `path` with save_pretrained."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"No demo checkpoint for family {family!r}; one of: {', '.join(BUILDABLE)}.")
    torch.manual_seed(seed)
    pipe = _BUILDERS[family]()
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def build_demo_upscaler(path: Path, base: Path, seed: int = 0) -> Path:
    """A tiny random-weight latent x2 upscaler that reuses the base checkpoint's VAE and text encoder."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionLatentUpscalePipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    source = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
    torch.manual_seed(seed)
    # The upscaler's UNet sees the noisy latents and the upsampled low-res latents (8 channels),
    # and conditions time on the text encoder's pooled output (128 + 32 = 160).
    unet = UNet2DConditionModel(
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=[32, 32, 64, 64],
        time_cond_proj_dim=160,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=32,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        in_channels=8,
        mid_block_type=None,
        only_cross_attention=False,
        out_channels=5,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
    )
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=source.vae,
        text_encoder=source.text_encoder,
        tokenizer=source.tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def build_demo_lora(base: Path, target: Path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA adapter for a demo checkpoint (any family with a UNet or transformer), saved
    with the pipeline's save_lora_weights as `target/pytorch_lora_weights.safetensors`.

    Its up-projections are random rather than zero (peft's default), so it visibly changes images.
    """
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    diffusers_logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(base, local_files_only=True)
    unet = getattr(pipe, "unet", None)
    denoiser, prefix = (unet, "unet_lora_layers") if unet is not None else (pipe.transformer, "transformer_lora_layers")
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    denoiser.add_adapter(config)
    target.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(target, **{prefix: get_peft_model_state_dict(denoiser)}, safe_serialization=True)
    return target / "pytorch_lora_weights.safetensors"
