"""A parameter-free video "autoencoder": space-to-depth in height, width and pairs of frames.

It is exact (decode(encode(x)) == x) and costs nothing to train, which is what a tiny model
trained on a 2-core CPU needs. It is a proper diffusers component: it saves and loads with
``from_pretrained`` and carries the config fields that WanPipeline (``z_dim``, ``latents_mean``,
``latents_std``, ``scale_factor_spatial``, ``scale_factor_temporal``) and CogVideoXPipeline
(``block_out_channels``, ``temporal_compression_ratio``, ``scaling_factor``) read.

Frames fold like a causal video VAE's: the first frame alone (repeated to fill its slot), then
consecutive groups of ``temporal_factor`` frames, so 1 + t * (L - 1) frames <-> L latent frames.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin


class ExactLatent:
    """The latent "distribution" of an exact encoder: sample and mode are the latent itself."""

    def __init__(self, latent: torch.Tensor) -> None:
        self.latent = latent

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent

    def mode(self) -> torch.Tensor:
        return self.latent


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """Space-to-depth video autoencoder (B, C, F, H, W) <-> (B, C * s * s * t, L, H / s, W / s)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        spatial_factor: int = 2,
        temporal_factor: int = 2,
        z_dim: int | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scale_factor_spatial: int | None = None,
        scale_factor_temporal: int | None = None,
        temporal_compression_ratio: int | None = None,
        block_out_channels: list[int] | None = None,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        expected = in_channels * spatial_factor**2 * temporal_factor
        if z_dim is not None and z_dim != expected:
            raise ValueError(f"z_dim must be in_channels * spatial_factor**2 * temporal_factor = {expected}")
        if spatial_factor & (spatial_factor - 1):
            raise ValueError("spatial_factor must be a power of two (CogVideoX derives it from block_out_channels)")
        self.register_to_config(
            z_dim=expected,
            latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * expected,
            latents_std=list(latents_std) if latents_std is not None else [1.0] * expected,
            scale_factor_spatial=spatial_factor,
            scale_factor_temporal=temporal_factor,
            temporal_compression_ratio=temporal_factor,
            block_out_channels=[in_channels] * (int(math.log2(spatial_factor)) + 1),
        )
        # no learned state; one saved buffer gives ModelMixin a device, a dtype and a weights file
        self.register_buffer("anchor", torch.zeros(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[ExactLatent]:
        """Video (B, C, 1 + t * (L - 1), H, W) -> latent (B, z_dim, L, H / s, W / s)."""
        s, t = self.config.spatial_factor, self.config.temporal_factor
        batch, channels, frames, height, width = x.shape
        if (frames - 1) % t or height % s or width % s:
            raise ValueError(f"video of {frames} frames of {height}x{width} does not fold by ({t}, {s}, {s})")
        x = torch.cat([x[:, :, :1].expand(-1, -1, t, -1, -1), x[:, :, 1:]], dim=2)  # first frame fills a slot
        latent_frames = x.shape[2] // t
        x = x.reshape(batch, channels, latent_frames, t, height // s, s, width // s, s)
        z = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(
            batch, channels * t * s * s, latent_frames, height // s, width // s
        )
        posterior = ExactLatent(z)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Latent (B, z_dim, L, h, w) -> video (B, C, 1 + t * (L - 1), h * s, w * s)."""
        s, t = self.config.spatial_factor, self.config.temporal_factor
        batch, _, latent_frames, height, width = z.shape
        channels = self.config.in_channels
        x = z.reshape(batch, channels, t, s, s, latent_frames, height, width)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(batch, channels, latent_frames * t, height * s, width * s)
        video = x[:, :, t - 1 :]  # the first slot holds the first frame t times
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample
