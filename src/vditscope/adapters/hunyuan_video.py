"""HunyuanVideo: dual-stream then single-stream blocks, joint [video, text] with a key padding mask.

The token refiner's attention runs over text only and is not a video layer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import AttentionSite, FamilyAdapter, blocks_sites, hidden_states_arg, patch_sizes


class HunyuanVideoAdapter(FamilyAdapter):
    family = "hunyuan_video"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    text_position = "after"
    cfg_mode = "separate"
    block_attributes = ("transformer_blocks", "single_transformer_blocks")

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        dual = blocks_sites(model, "transformer_blocks", {"attn": "self"})
        single = blocks_sites(model, "single_transformer_blocks", {"attn": "self"}, first_layer=len(dual))
        return dual + single

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        _, _, frames, height, width = hidden_states_arg(args, kwargs).shape
        pt, ph, pw = patch_sizes(model.config)
        return frames // pt, height // ph, width // pw
