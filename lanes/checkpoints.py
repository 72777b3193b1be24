"""A tiny random-weight Stable Diffusion checkpoint, built offline from configs.

It is saved with save_pretrained and loaded back through the same from_pretrained path
that a user's own checkpoint takes. Its images are noise; it exists so that demos and
tests exercise the real pipeline code without downloading weights.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path


def build_demo_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
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
    # Two blocks: the VAE scale factor is 2, not 8.
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=256,
        )
    )
    # A character-level vocabulary with no merges: every printable character is a token.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.printable.strip():
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
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
