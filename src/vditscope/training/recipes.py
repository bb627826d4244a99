"""Per-family recipes of the tiny shapes models: which pipeline to build and which loss to train.

Wan: UMT5 text encoder, WanTransformer3DModel (video-only self-attention, text through
cross-attention), flow matching (rectified flow, velocity target). CogVideoX: T5 text encoder,
CogVideoXTransformer3DModel (joint [text, video] self-attention), DDIM with v-prediction and a
zero-terminal-SNR schedule, as the released CogVideoX models. Both use the exact PixelShuffleVAE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..models.pixel_vae import PixelShuffleVAE

if TYPE_CHECKING:
    from .tiny import TinyConfig


class Recipe(Protocol):
    def build_pipeline(self, config: TinyConfig, tokenizer: Any) -> Any: ...

    def loss(
        self, pipe: Any, latents: torch.Tensor, embeds: torch.Tensor, generator: torch.Generator, config: TinyConfig
    ) -> torch.Tensor: ...


def _text_config(config: TinyConfig) -> dict[str, Any]:
    return {
        "vocab_size": 64,
        "d_model": config.text_dim,
        "d_kv": 16,
        "d_ff": 2 * config.text_dim,
        "num_layers": config.text_layers,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "dropout_rate": 0.0,
        "feed_forward_proj": "gated-gelu",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def shifted_noise_levels(config: TinyConfig, generator: torch.Generator, count: int) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal, shifted towards high noise like the sampling schedule."""
    s = torch.sigmoid(torch.randn(count, generator=generator))
    return config.shift * s / (1 + (config.shift - 1) * s)


class WanRecipe:
    def build_pipeline(self, config: TinyConfig, tokenizer: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        vae = PixelShuffleVAE(3, config.spatial_factor, config.temporal_factor)
        z_dim = vae.config.z_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            text_encoder = UMT5EncoderModel(UMT5Config(**_text_config(config)))
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

    def loss(
        self, pipe: Any, latents: torch.Tensor, embeds: torch.Tensor, generator: torch.Generator, config: TinyConfig
    ) -> torch.Tensor:
        sigma = shifted_noise_levels(config, generator, latents.shape[0])
        noise = torch.randn(latents.shape, generator=generator)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        prediction = pipe.transformer(
            hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=embeds, return_dict=False
        )[0]
        return torch.nn.functional.mse_loss(prediction, noise - latents)


class CogVideoXRecipe:
    def build_pipeline(self, config: TinyConfig, tokenizer: Any) -> Any:
        from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
        from transformers import T5Config, T5EncoderModel

        vae = PixelShuffleVAE(3, config.spatial_factor, config.temporal_factor)
        latent_side = config.size // config.spatial_factor
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            text_encoder = T5EncoderModel(T5Config(**_text_config(config)))
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
                use_rotary_positional_embeddings=False,
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

    def loss(
        self, pipe: Any, latents: torch.Tensor, embeds: torch.Tensor, generator: torch.Generator, config: TinyConfig
    ) -> torch.Tensor:
        x0 = latents.permute(0, 2, 1, 3, 4) * pipe.vae.config.scaling_factor  # (B, F, C, H, W)
        steps = pipe.scheduler.config.num_train_timesteps
        level = shifted_noise_levels(config, generator, x0.shape[0])
        t = (level * (steps - 1)).round().long()
        alpha_bar = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        velocity = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        prediction = pipe.transformer(hidden_states=noisy, encoder_hidden_states=embeds, timestep=t, return_dict=False)[
            0
        ]
        return torch.nn.functional.mse_loss(prediction, velocity)


RECIPES: dict[str, Recipe] = {"wan": WanRecipe(), "cogvideox": CogVideoXRecipe()}


def recipe_for(family: str) -> Recipe:
    if family not in RECIPES:
        raise ValueError(f"no tiny-model recipe for {family!r}; known: {', '.join(RECIPES)}")
    return RECIPES[family]
