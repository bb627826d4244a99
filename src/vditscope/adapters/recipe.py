"""What a family's training recipe provides (``Recipe``), and the pieces the recipes share.

A recipe says how a family is trained: which tiny pipeline to build, the transformer's latent space and
layout, how clean latents are noised and what the prediction regresses. Each family's recipe lives in its
adapter module (``wan.py``, ``cogvideox.py``), beside what capture knows of the family; training
(``vditscope.training``) drives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..tiny import TinyConfig


@dataclass(frozen=True)
class Noised:
    """A noised training batch in the transformer's layout and the target its prediction regresses."""

    noisy: torch.Tensor
    timestep: torch.Tensor
    target: torch.Tensor


class Recipe(Protocol):
    """How one family is trained (its adapter's ``recipe``)."""

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

    def noised_at(self, pipe: Any, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> Noised:
        """Noise clean latents ``x0`` with ``noise`` at the noise levels ``level`` (B,) in [0, 1]: what ``noised``
        does once it has drawn them."""
        ...

    def transformer_kwargs(self, pipe: Any, batch: Noised, embeds: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of the transformer call that predicts ``batch.target``."""
        ...


def tiny_text_config(config: TinyConfig) -> dict[str, Any]:
    """The small T5-style text encoder of a tiny pipeline (Wan's UMT5 and CogVideoX's T5 take the same keys)."""
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


def latent_frames(pipe: Any, num_frames: int) -> int:
    """Latent frames of a generation of ``num_frames`` frames (the VAE keeps the first frame)."""
    return (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
