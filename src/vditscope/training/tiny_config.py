"""The sizes and recipe of a shipped tiny model (its own module: the family recipes build pipelines from
it, and the trainer trains them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the data and the model, and the training recipe."""

    size: int = 32  # pixels per side (Wan needs a multiple of 16)
    frames: int = 17  # 1 + 2 * 8: 9 latent frames
    spatial_factor: int = 2
    temporal_factor: int = 2
    heads: int = 4
    head_dim: int = 32
    layers: int = 4
    ffn_dim: int = 384
    text_dim: int = 64
    text_layers: int = 2
    max_text_tokens: int = 16
    batch: int = 16
    lr: float = 6e-4
    warmup: int = 100
    shift: float = 3.0  # sigma shift: training and sampling lean towards high noise
    caption_dropout: float = 0.1
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    seed: int = 0
    family: str = "wan"

    def generation(self) -> dict[str, Any]:
        return {
            "height": self.size,
            "width": self.size,
            "num_frames": self.frames,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_text_tokens,
        }
