"""CogVideoX: joint self-attention over [text, video] (text first); latents are (B, F, C, H, W). CogVideoX 1.5
patches 2 latent frames into one token frame (``patch_size_t``); its pipeline pads the latent frames to a multiple
of it, so the token grid has frames / patch_size_t frames."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.pixel_vae import PixelShuffleVAE
from ..tiny import TinyConfig
from .base import AttentionSite, FamilyAdapter, blocks_sites, hidden_states_arg, patch_sizes
from .recipe import Noised, latent_frames, shifted_noise_levels, tiny_text_config


class CogVideoXRecipe:
    """CogVideoX's training recipe: DDIM with v-prediction and a zero-terminal-SNR schedule, T5 text encoder."""

    def build_pipeline(self, config: TinyConfig, tokenizer: Any) -> Any:
        from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
        from transformers import T5Config, T5EncoderModel

        vae = PixelShuffleVAE(3, config.spatial_factor, config.temporal_factor)
        latent_side = config.size // config.spatial_factor
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            text_encoder = T5EncoderModel(T5Config(**tiny_text_config(config)))
            transformer = CogVideoXTransformer3DModel(
                num_attention_heads=config.heads,
                attention_head_dim=config.head_dim,
                in_channels=vae.config.z_dim,
                out_channels=vae.config.z_dim,
                time_embed_dim=128,
                text_embed_dim=config.text_dim,
                num_layers=config.layers,
                sample_width=latent_side,
                sample_height=latent_side,
                sample_frames=config.frames,
                patch_size=2,
                temporal_compression_ratio=config.temporal_factor,
                max_text_seq_length=config.max_text_tokens,
                use_rotary_positional_embeddings=config.rotary,
                use_learned_positional_embeddings=config.rotary,  # the sincos buffer kept beside the rotary
            )
        scheduler = CogVideoXDDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
            snr_shift_scale=1.0,
            timestep_spacing="trailing",
            clip_sample=False,
            set_alpha_to_one=True,
        )
        return CogVideoXPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )

    def model_latents(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        return latents.permute(0, 2, 1, 3, 4) * pipe.vae.config.scaling_factor  # (B, F, C, H, W)

    def latent_shape(self, pipe: Any, batch: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        frames = latent_frames(pipe, num_frames)
        patch_t = pipe.transformer.config.patch_size_t
        if patch_t is not None and frames % patch_t:  # CogVideoX 1.5 pads to whole temporal patches
            frames += patch_t - frames % patch_t
        spatial = pipe.vae_scale_factor_spatial
        channels = pipe.transformer.config.in_channels
        return (batch, frames, channels, height // spatial, width // spatial)

    def noised(self, pipe: Any, x0: torch.Tensor, generator: torch.Generator, shift: float) -> Noised:
        level = shifted_noise_levels(shift, generator, x0.shape[0])
        return self.noised_at(pipe, x0, level, torch.randn(x0.shape, generator=generator).to(x0))

    def noised_at(self, pipe: Any, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> Noised:
        t = (level * (pipe.scheduler.config.num_train_timesteps - 1)).round().long()
        alpha_bar = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1).to(x0)
        noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        velocity = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        return Noised(noisy, t.to(x0.device), velocity)

    def transformer_kwargs(self, pipe: Any, batch: Noised, embeds: torch.Tensor) -> dict[str, Any]:
        kwargs = {"hidden_states": batch.noisy, "encoder_hidden_states": embeds, "timestep": batch.timestep}
        if pipe.transformer.config.use_rotary_positional_embeddings:  # CogVideoX-5B and 1.5
            _, frames, _, height, width = batch.noisy.shape
            spatial = pipe.vae_scale_factor_spatial
            # the pipeline's own (private) helper, so that the embedding matches generation exactly
            kwargs["image_rotary_emb"] = pipe._prepare_rotary_positional_embeddings(
                height * spatial, width * spatial, frames, batch.noisy.device
            )
        return kwargs


class CogVideoXAdapter(FamilyAdapter):
    family = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    text_position = "before"
    cfg_mode = "batched"
    recipe = CogVideoXRecipe()
    block_attributes = ("transformer_blocks",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        return blocks_sites(model, "transformer_blocks", {"attn1": "self"})

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        _, frames, _, height, width = hidden_states_arg(args, kwargs).shape
        pt, ph, pw = patch_sizes(model.config)
        # the pipelines pad the latent frames to whole temporal patches (the patch embedding needs them)
        return -(-frames // pt), height // ph, width // pw
