"""What an adapter tells vditscope about one model family: its attention sites and token layout."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..layout import TokenLayout
from .recipe import Recipe

# a pipeline's denoising transformers, in the order a Wan 2.2 pipeline runs them (high noise, then low noise)
TRANSFORMER_COMPONENTS = ("transformer", "transformer_2")

# "self": video self-attention (joint with text where the family has it); "cross": video queries on text
# keys; "image": video queries on the CLIP image tokens of an image-to-video model (Wan 2.1 I2V attn2)
SiteKind = Literal["self", "cross", "image"]


class UnsupportedModelError(ValueError):
    """The model is not a transformer of a supported video family."""


@dataclass(frozen=True)
class AttentionSite:
    """One attention module of the transformer that vditscope can observe.

    ``layer`` numbers the video layers 0..L-1 in execution order; a layer may have a self-attention
    site and a cross-attention site (Wan and LTX attn2, text as keys). ``call_kinds``: the kinds of the
    first SDPA calls of one forward of the module where they differ from ``kind`` (Wan I2V attn2 attends
    to the image tokens, then to the text: ("image", "cross")); later calls are of ``kind``.
    """

    name: str
    layer: int
    kind: SiteKind
    module: nn.Module
    call_kinds: tuple[SiteKind, ...] = ()

    @property
    def kinds(self) -> frozenset[str]:
        """Every kind of call the module makes."""
        return frozenset((self.kind, *self.call_kinds))

    def for_call(self, index: int) -> AttentionSite:
        """The site as its ``index``-th SDPA call of one forward sees it (that call's kind)."""
        if index < len(self.call_kinds) and self.call_kinds[index] != self.kind:
            return replace(self, kind=self.call_kinds[index])
        return self


class FamilyAdapter:
    """Knowledge of one diffusers video transformer family. Subclasses fill in the class attributes."""

    family: ClassVar[str]
    model_classes: ClassVar[tuple[str, ...]]
    # where text tokens sit in the joint self-attention sequence: "after" or "before" the video
    # tokens, or None when self-attention is video-only
    text_position: ClassVar[Literal["after", "before"] | None] = None
    # how a pipeline batches classifier-free guidance: "separate" calls or one "batched" call
    # (uncond first); the pipeline's cache_context name says which, this is documentation
    cfg_mode: ClassVar[Literal["separate", "batched"]] = "separate"
    # the model's attributes holding its transformer blocks (ModuleLists), in execution order
    block_attributes: ClassVar[tuple[str, ...]]
    # how the family is trained (train-tiny, retrain): a recipe, or None where vditscope has none
    recipe: ClassVar[Recipe | None] = None

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__name__ in cls.model_classes

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        """The attention modules of the video layers, in execution order."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks in execution order (what "layer i" of a retraining or edit means)."""
        return [block for attr in self.block_attributes for block in getattr(model, attr, None) or []]

    def video_grid(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        """Video token grid (frames, height, width) of one transformer forward call."""
        raise NotImplementedError

    def layout(self, grid: tuple[int, int, int], num_tokens: int) -> TokenLayout | None:
        """Layout of a self-attention call over ``num_tokens`` tokens, or None if it does not fit."""
        frames, height, width = grid
        num_video = frames * height * width
        if num_tokens < num_video or (self.text_position is None and num_tokens != num_video):
            return None
        if self.text_position == "before":
            start = num_tokens - num_video
            return TokenLayout(frames, height, width, video_start=start, text=(0, start))
        text = (num_video, num_tokens) if self.text_position == "after" else None
        return TokenLayout(frames, height, width, video_start=0, text=text)


def hidden_states_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The ``hidden_states`` input of a transformer forward call, positional or keyword."""
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    raise ValueError("the transformer was called without hidden_states")


def patch_sizes(config: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes from a diffusers transformer config."""
    patch = config.patch_size
    if isinstance(patch, (tuple, list)):
        return int(patch[0]), int(patch[1]), int(patch[2])
    temporal = getattr(config, "patch_size_t", None) or 1
    return int(temporal), int(patch), int(patch)


def blocks_sites(
    model: nn.Module, blocks: str, attrs: dict[str, SiteKind], first_layer: int = 0
) -> list[AttentionSite]:
    """Sites named ``{blocks}.{i}.{attr}`` for each block i, layer = first_layer + i."""
    sites = []
    for i, block in enumerate(getattr(model, blocks, None) or []):
        for attr, kind in attrs.items():
            module = getattr(block, attr, None)
            if module is not None:
                sites.append(AttentionSite(f"{blocks}.{i}.{attr}", first_layer + i, kind, module))
    return sites
