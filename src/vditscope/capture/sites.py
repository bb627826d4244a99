"""Which modules a hook session works on: the denoising transformer(s) of a model or pipeline and
their attention sites."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from ..adapters.base import TRANSFORMER_COMPONENTS
from .selection import checked_site_layers


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (OptimizedModule) holds, or the module itself: hooks go on
    the original modules, which the compiled wrapper calls."""
    inner = getattr(model, "_orig_mod", None)
    return uncompiled(inner) if isinstance(inner, nn.Module) else model


def named_transformers(model_or_pipeline: Any) -> tuple[list[tuple[str, nn.Module]], Any]:
    """(component name, transformer) of each denoising transformer of a pipeline (Wan 2.2 has two) and
    its scheduler, or ([("transformer", model)], None); compiled transformers as the modules they wrap."""
    if isinstance(model_or_pipeline, nn.Module):
        return [("transformer", uncompiled(model_or_pipeline))], None
    components = getattr(model_or_pipeline, "components", None)
    if isinstance(components, dict):
        models = [
            (name, uncompiled(components[name]))
            for name in TRANSFORMER_COMPONENTS
            if isinstance(components.get(name), nn.Module)
        ]
        if models:
            return models, components.get("scheduler")
    raise TypeError(f"capture needs a diffusers video transformer or pipeline, got {type(model_or_pipeline).__name__}")


def transformers_of(model_or_pipeline: Any) -> tuple[list[nn.Module], Any]:
    """The denoising transformer(s) of a pipeline (Wan 2.2 has two) and its scheduler, or (model, None);
    compiled transformers as the modules they wrap."""
    named, scheduler = named_transformers(model_or_pipeline)
    return [model for _, model in named], scheduler


def transformer_sites(adapter: FamilyAdapter, named: list[tuple[str, nn.Module]]) -> list[AttentionSite]:
    """The attention sites of each transformer; those of a pipeline's second transformer (Wan 2.2's
    low-noise expert) are named ``transformer_2.<site>``, with the same layers 0..L-1 as the first's."""
    return [
        site if component == "transformer" else replace(site, name=f"{component}.{site.name}")
        for component, model in named
        for site in adapter.sites(model)
    ]


def self_attention_sites(
    model_or_pipeline: Any, layers: Iterable[int] | None
) -> tuple[list[nn.Module], Any, FamilyAdapter, list[AttentionSite]]:
    """(transformers, scheduler, adapter, the self-attention sites of the chosen layers) of a model or
    pipeline; a layer out of range raises ValueError."""
    named, scheduler = named_transformers(model_or_pipeline)
    models = [model for _, model in named]
    adapter = adapter_for(models[0])
    chosen = checked_site_layers(layers, adapter.sites(models[0]))
    sites = [
        site
        for site in transformer_sites(adapter, named)
        if site.kind == "self" and (chosen is None or site.layer in chosen)
    ]
    return models, scheduler, adapter, sites
