"""LTX-Video: video-only self-attention (attn1), cross-attention to text (attn2); packed latents."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import AttentionSite, FamilyAdapter, blocks_sites, patch_sizes


class LTXVideoAdapter(FamilyAdapter):
    family = "ltx"
    model_classes = ("LTXVideoTransformer3DModel",)
    text_position = None
    cfg_mode = "batched"
    block_attributes = ("transformer_blocks",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        return blocks_sites(model, "transformer_blocks", {"attn1": "self", "attn2": "cross"})

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        try:
            frames, height, width = (int(kwargs[name]) for name in ("num_frames", "height", "width"))
        except KeyError as exc:
            raise ValueError("LTX-Video transformer calls need num_frames, height and width keywords") from exc
        pt, ph, pw = patch_sizes(model.config)
        return frames // pt, height // ph, width // pw
