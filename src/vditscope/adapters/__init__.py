"""Model-family adapters: the only place that knows Wan, Mochi, HunyuanVideo, CogVideoX and LTX-Video."""

from __future__ import annotations

from torch import nn

from .base import AttentionSite, FamilyAdapter, UnsupportedModelError
from .cogvideox import CogVideoXAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .ltx import LTXVideoAdapter
from .mochi import MochiAdapter
from .wan import WanAdapter

ADAPTERS: dict[str, type[FamilyAdapter]] = {
    cls.family: cls for cls in (WanAdapter, MochiAdapter, HunyuanVideoAdapter, CogVideoXAdapter, LTXVideoAdapter)
}


def supported_families() -> list[str]:
    return list(ADAPTERS)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of a diffusers video transformer, or UnsupportedModelError naming the families."""
    for cls in ADAPTERS.values():
        if cls.matches(model):
            return cls()
    raise UnsupportedModelError(
        f"unsupported model {type(model).__name__}: vditscope supports "
        + ", ".join(f"{name} ({', '.join(cls.model_classes)})" for name, cls in ADAPTERS.items())
    )


__all__ = ["ADAPTERS", "AttentionSite", "FamilyAdapter", "UnsupportedModelError", "adapter_for", "supported_families"]
