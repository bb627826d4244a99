"""Mochi-1: joint self-attention over [video, valid text]; the processor loops over the batch."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import AttentionSite, FamilyAdapter, blocks_sites, hidden_states_arg, patch_sizes


class MochiAdapter(FamilyAdapter):
    family = "mochi"
    model_classes = ("MochiTransformer3DModel",)
    text_position = "after"
    cfg_mode = "batched"
    block_attributes = ("transformer_blocks",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        return blocks_sites(model, "transformer_blocks", {"attn1": "self"})

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        _, _, frames, height, width = hidden_states_arg(args, kwargs).shape
        _, ph, pw = patch_sizes(model.config)
        return frames, height // ph, width // pw
