"""CogVideoX: joint self-attention over [text, video] (text first); latents are (B, F, C, H, W)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import AttentionSite, FamilyAdapter, blocks_sites, hidden_states_arg, patch_sizes


class CogVideoXAdapter(FamilyAdapter):
    family = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    text_position = "before"
    cfg_mode = "batched"
    block_attributes = ("transformer_blocks",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        return blocks_sites(model, "transformer_blocks", {"attn1": "self"})

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        _, frames, _, height, width = hidden_states_arg(args, kwargs).shape
        pt, ph, pw = patch_sizes(model.config)
        return -(-frames // pt), height // ph, width // pw
