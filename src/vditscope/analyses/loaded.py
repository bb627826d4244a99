"""A pipeline loaded for one command, with what every command asks of it: the model's settings, the
generation's keyword arguments, the default prompts, and the layer and head counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters import FamilyAdapter
from ..adapters.loading import load_pipeline, resolve_device, resolve_model_dir
from ..tiny import DEFAULT_MODEL
from .options import GenerationOptions
from .settings import default_prompts, model_settings


def model_directory(options: GenerationOptions) -> Path:
    """The options' model as a local directory (the shipped one by default), resolved without loading it:
    an input the output policy keeps --out away from."""
    return resolve_model_dir(options.model or DEFAULT_MODEL)


@dataclass
class LoadedPipeline:
    """The pipeline, its family adapter, its directory, its vditscope.json settings and its device."""

    pipe: Any
    adapter: FamilyAdapter
    model_dir: Path
    settings: dict[str, Any]
    device: str

    @classmethod
    def load(cls, options: GenerationOptions, model: str | Path | None = None) -> LoadedPipeline:
        """Load ``model`` (default: the options' model, else the shipped one) on the options' device."""
        device = resolve_device(options.device)
        pipe, adapter, model_dir = load_pipeline(model or options.model or DEFAULT_MODEL, device, options.dtype)
        return cls(pipe, adapter, model_dir, model_settings(model_dir), device)

    @property
    def self_layers(self) -> int:
        """Distinct layer indices of the transformer's self-attention sites."""
        return len({site.layer for site in self.adapter.sites(self.pipe.transformer) if site.kind == "self"})

    @property
    def heads(self) -> int | None:
        """Attention heads per layer, where the transformer's config says."""
        heads = getattr(self.pipe.transformer.config, "num_attention_heads", None)
        return int(heads) if heads is not None else None

    def generation(self, options: GenerationOptions) -> dict[str, Any]:
        """The pipeline call's keyword arguments: the model's settings, then the options."""
        return options.generation_kwargs(self.settings)

    def prompts(self, given: Sequence[str] = ()) -> list[str]:
        """The given prompts, or the model's defaults."""
        return list(given) or default_prompts(self.settings)
