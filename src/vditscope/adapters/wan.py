"""Wan 2.1 / 2.2: video-only self-attention (attn1) and cross-attention to umT5 text (attn2)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import AttentionSite, FamilyAdapter, blocks_sites, hidden_states_arg, patch_sizes


class WanAdapter(FamilyAdapter):
    family = "wan"
    model_classes = ("WanTransformer3DModel",)
    text_position = None
    cfg_mode = "separate"
    block_attributes = ("blocks",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        return blocks_sites(model, "blocks", {"attn1": "self", "attn2": "cross"})

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        _, _, frames, height, width = hidden_states_arg(args, kwargs).shape
        pt, ph, pw = patch_sizes(model.config)
        return frames // pt, height // ph, width // pw
