"""Per-family training recipes: which tiny pipeline to build, and how a family is trained.

Wan: UMT5 text encoder, WanTransformer3DModel (video-only self-attention, text through
cross-attention), flow matching (rectified flow, velocity target). CogVideoX: T5 text encoder,
CogVideoXTransformer3DModel (joint [text, video] self-attention), DDIM with v-prediction and a
zero-terminal-SNR schedule, as the released CogVideoX models. The tiny models use the exact
PixelShuffleVAE; the training side (latent space, noising, the transformer call) also serves
retraining of any pipeline of these families (``retrain.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..models.pixel_vae import PixelShuffleVAE

if TYPE_CHECKING:
    from .tiny_config import TinyConfig


@dataclass(frozen=True)
class Noised:
    """A noised training batch in the transformer's layout and the target its prediction regresses."""

    noisy: torch.Tensor
    timestep: torch.Tensor
    target: torch.Tensor


class Recipe(Protocol):
    def build_pipeline(self, config: TinyConfig, tokenizer: Any) -> Any:
        """A freshly initialized tiny pipeline of this family."""
        ...

    def model_latents(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents (B, C, F, H, W) -> the transformer's latent space and layout."""
        ...

    def latent_shape(self, pipe: Any, batch: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        """Shape of the transformer's latents for a generation of this size."""
        ...

    def noised(self, pipe: Any, x0: torch.Tensor, generator: torch.Generator, shift: float) -> Noised:
        """Noise clean latents ``x0`` at random levels (random draws from ``generator``, on the CPU)."""
        ...

    def transformer_kwargs(self, pipe: Any, batch: Noised, embeds: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of the transformer call that predicts ``batch.target``."""
        ...


def denoising_loss(
    recipe: Recipe,
    pipe: Any,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    generator: torch.Generator,
    shift: float,
    transformer: Any = None,
) -> torch.Tensor:
    """The family's training loss on VAE latents: MSE of the transformer's prediction to its target."""
    batch = recipe.noised(pipe, recipe.model_latents(pipe, latents), generator, shift)
    call = transformer if transformer is not None else pipe.transformer
    prediction = call(**recipe.transformer_kwargs(pipe, batch, embeds), return_dict=False)[0]
    return torch.nn.functional.mse_loss(prediction, batch.target)


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


def shifted_noise_levels(shift: float, generator: torch.Generator, count: int) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal, shifted towards high noise like the sampling schedule."""
    s = torch.sigmoid(torch.randn(count, generator=generator))
    return shift * s / (1 + (shift - 1) * s)


def _latent_frames(pipe: Any, num_frames: int) -> int:
    return (num_frames - 1) // pipe.vae_scale_factor_temporal + 1


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
        return (batch, channels, _latent_frames(pipe, num_frames), height // spatial, width // spatial)

    def noised(self, pipe: Any, x0: torch.Tensor, generator: torch.Generator, shift: float) -> Noised:
        sigma = shifted_noise_levels(shift, generator, x0.shape[0])
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        s = sigma.view(-1, 1, 1, 1, 1).to(x0)
        return Noised((1 - s) * x0 + s * noise, (sigma * 1000).to(x0.device), noise - x0)

    def transformer_kwargs(self, pipe: Any, batch: Noised, embeds: torch.Tensor) -> dict[str, Any]:
        return {"hidden_states": batch.noisy, "timestep": batch.timestep, "encoder_hidden_states": embeds}


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

    def model_latents(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        return latents.permute(0, 2, 1, 3, 4) * pipe.vae.config.scaling_factor  # (B, F, C, H, W)

    def latent_shape(self, pipe: Any, batch: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        frames = _latent_frames(pipe, num_frames)
        patch_t = pipe.transformer.config.patch_size_t
        if patch_t is not None and frames % patch_t:  # CogVideoX 1.5 pads to whole temporal patches
            frames += patch_t - frames % patch_t
        spatial = pipe.vae_scale_factor_spatial
        channels = pipe.transformer.config.in_channels
        return (batch, frames, channels, height // spatial, width // spatial)

    def noised(self, pipe: Any, x0: torch.Tensor, generator: torch.Generator, shift: float) -> Noised:
        steps = pipe.scheduler.config.num_train_timesteps
        level = shifted_noise_levels(shift, generator, x0.shape[0])
        t = (level * (steps - 1)).round().long()
        alpha_bar = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1).to(x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
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


RECIPES: dict[str, Recipe] = {"wan": WanRecipe(), "cogvideox": CogVideoXRecipe()}


def recipe_for(family: str) -> Recipe:
    if family not in RECIPES:
        raise ValueError(f"no tiny-model recipe for {family!r}; known: {', '.join(RECIPES)}")
    return RECIPES[family]
