"""Which modules a hook session works on: the denoising transformer(s) of a model or pipeline and
their attention sites."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from .selection import checked_site_layers


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (OptimizedModule) holds, or the module itself: hooks go on
    the original modules, which the compiled wrapper calls."""
    inner = getattr(model, "_orig_mod", None)
    return uncompiled(inner) if isinstance(inner, nn.Module) else model


def transformers_of(model_or_pipeline: Any) -> tuple[list[nn.Module], Any]:
    """The denoising transformer(s) of a pipeline (Wan 2.2 has two) and its scheduler, or (model, None);
    compiled transformers as the modules they wrap."""
    if isinstance(model_or_pipeline, nn.Module):
        return [uncompiled(model_or_pipeline)], None
    components = getattr(model_or_pipeline, "components", None)
    if isinstance(components, dict):
        models = [
            uncompiled(components[name])
            for name in ("transformer", "transformer_2")
            if isinstance(components.get(name), nn.Module)
        ]
        if models:
            return models, components.get("scheduler")
    raise TypeError(f"capture needs a diffusers video transformer or pipeline, got {type(model_or_pipeline).__name__}")


def self_attention_sites(
    model_or_pipeline: Any, layers: Iterable[int] | None
) -> tuple[list[nn.Module], Any, FamilyAdapter, list[AttentionSite]]:
    """(transformers, scheduler, adapter, the self-attention sites of the chosen layers) of a model or
    pipeline; a layer out of range raises ValueError."""
    models, scheduler = transformers_of(model_or_pipeline)
    adapter = adapter_for(models[0])
    chosen = checked_site_layers(layers, adapter.sites(models[0]))
    sites = [
        site
        for model in models
        for site in adapter.sites(model)
        if site.kind == "self" and (chosen is None or site.layer in chosen)
    ]
    return models, scheduler, adapter, sites
