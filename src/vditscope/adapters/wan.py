"""Wan 2.1 / 2.2: video-only self-attention (attn1) and cross-attention to umT5 text (attn2); the image-to-video
models with CLIP image tokens (``image_dim``) attend in attn2 to the image tokens first, then to the text."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..models.pixel_vae import PixelShuffleVAE
from ..tiny import TinyConfig
from .base import AttentionSite, FamilyAdapter, blocks_sites, hidden_states_arg, patch_sizes
from .recipe import Noised, latent_frames, shifted_noise_levels, tiny_text_config


class WanRecipe:
    """Wan's training recipe: flow matching (rectified flow, velocity target), UMT5 text encoder."""

    def build_pipeline(self, config: TinyConfig, tokenizer: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        vae = PixelShuffleVAE(3, config.spatial_factor, config.temporal_factor)
        z_dim = vae.config.z_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            text_encoder = UMT5EncoderModel(UMT5Config(**tiny_text_config(config)))
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=config.heads,
                attention_head_dim=config.head_dim,
                in_channels=z_dim,
                out_channels=z_dim,
                text_dim=config.text_dim,
                freq_dim=64,
                ffn_dim=config.ffn_dim,
                num_layers=config.layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=64,
            )
        scheduler = FlowMatchEulerDiscreteScheduler(shift=config.shift)
        return WanPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
        )

    def model_latents(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        # WanPipeline decodes latents / (1 / std) + mean, so the model's space is (x - mean) / std
        config = pipe.vae.config
        if getattr(config, "latents_mean", None) is None:
            return latents
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=latents.dtype, device=latents.device).view(shape)
        std = torch.tensor(config.latents_std, dtype=latents.dtype, device=latents.device).view(shape)
        return (latents - mean) / std

    def latent_shape(self, pipe: Any, batch: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        spatial = pipe.vae_scale_factor_spatial
        channels = pipe.transformer.config.in_channels
        return (batch, channels, latent_frames(pipe, num_frames), height // spatial, width // spatial)

    def noised(self, pipe: Any, x0: torch.Tensor, generator: torch.Generator, shift: float) -> Noised:
        sigma = shifted_noise_levels(shift, generator, x0.shape[0])
        return self.noised_at(pipe, x0, sigma, torch.randn(x0.shape, generator=generator).to(x0))

    def noised_at(self, pipe: Any, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> Noised:
        s = level.view(-1, 1, 1, 1, 1).to(x0)
        return Noised((1 - s) * x0 + s * noise, (level * 1000).to(x0.device), noise - x0)

    def transformer_kwargs(self, pipe: Any, batch: Noised, embeds: torch.Tensor) -> dict[str, Any]:
        return {"hidden_states": batch.noisy, "timestep": batch.timestep, "encoder_hidden_states": embeds}


class WanAdapter(FamilyAdapter):
    family = "wan"
    model_classes = ("WanTransformer3DModel",)
    text_position = None
    cfg_mode = "separate"
    recipe = WanRecipe()
    block_attributes = ("blocks",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        sites = blocks_sites(model, "blocks", {"attn1": "self", "attn2": "cross"})
        # WanAttnProcessor: an attn2 with added key/value projections (I2V) makes an image call, then the text call
        return [
            replace(site, call_kinds=("image", "cross"))
            if site.kind == "cross" and getattr(site.module, "add_k_proj", None) is not None
            else site
            for site in sites
        ]

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        _, _, frames, height, width = hidden_states_arg(args, kwargs).shape
        pt, ph, pw = patch_sizes(model.config)
        return frames // pt, height // ph, width // pw
