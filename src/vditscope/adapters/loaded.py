"""One home for "a model": a pipeline loaded with its family adapter, directory, vditscope.json settings and
device, what commands ask of it (layer and head counts, default prompts), and the one seeded generation call."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..tiny import DEFAULT_MODEL
from .base import FamilyAdapter
from .loading import load_pipeline, resolve_device, resolve_model_dir
from .placement import parallel_device
from .settings import model_settings


def model_directory(model: str | Path | None) -> Path:
    """A --model argument (None: the shipped model) as a local directory, resolved without loading it: an
    input the output policy keeps --out away from."""
    return resolve_model_dir(model or DEFAULT_MODEL)


def generate(
    pipe: Any, prompt: str, seed: int, settings: dict[str, Any], device: str
) -> tuple[np.ndarray, torch.Tensor]:
    """(frames (T, H, W, 3) float32 in [0, 1], final latents on the CPU) of one seeded generation.

    The latents come from ``callback_on_step_end`` at the last step, which every supported
    diffusers video pipeline offers, so no family-specific decoding is needed."""
    kept: dict[str, torch.Tensor] = {}

    def keep_latents(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        kept["latents"] = tensors["latents"].detach().to("cpu", copy=True)
        return {}

    generator = torch.Generator(device=device).manual_seed(int(seed))
    result = pipe(
        prompt=prompt,
        generator=generator,
        output_type="np",
        callback_on_step_end=keep_latents,
        callback_on_step_end_tensor_inputs=["latents"],
        **settings,
    )
    return np.asarray(result.frames[0], dtype=np.float32), kept["latents"]


@dataclass(frozen=True)
class ModelFacts:
    """What a driver needs to know about a loaded model to plan and label a run (it crosses processes)."""

    family: str
    text_position: str | None
    layers: int  # distinct layer indices over every attention site
    self_layers: int  # distinct layer indices of self-attention sites
    heads: int | None
    device: str
    host: str  # the loading process's machine
    pid: int  # the loading process


class LoadedPipeline:
    """A pipeline loaded once (``model``: a directory, cached id or shipped name; None: the shipped model) with
    its family adapter, directory, vditscope.json settings (over the pipeline's defaults), device and offloading
    (``offload``, ``compile``, ``context_parallel``: see ``placement.Placement``)."""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        dtype: str = "float32",
        offload: str = "none",
        compile: str = "none",
        context_parallel: int = 1,
    ) -> None:
        self.device = parallel_device(resolve_device(device), context_parallel)
        self.offload = offload
        self.pipe, self.adapter, self.model_dir = load_pipeline(
            model or DEFAULT_MODEL, self.device, dtype, offload, compile, context_parallel
        )
        self.settings = model_settings(self.model_dir)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def self_layers(self) -> int:
        """Distinct layer indices of the transformer's self-attention sites."""
        return len({site.layer for site in self.adapter.sites(self.pipe.transformer) if site.kind == "self"})

    @property
    def heads(self) -> int | None:
        """Attention heads per layer, where the transformer's config says."""
        heads = getattr(self.pipe.transformer.config, "num_attention_heads", None)
        return int(heads) if heads is not None else None

    def generate(self, prompt: str, seed: int, kwargs: dict[str, Any]) -> tuple[np.ndarray, torch.Tensor]:
        """The one seeded generation call (see ``generate``) of this pipeline on its device."""
        return generate(self.pipe, prompt, seed, kwargs, self.device)

    def facts(self) -> ModelFacts:
        sites = self.adapter.sites(self.pipe.transformer)
        return ModelFacts(
            family=self.family,
            text_position=self.adapter.text_position,
            layers=len({site.layer for site in sites}),
            self_layers=self.self_layers,
            heads=self.heads,
            device=self.device,
            host=platform.node(),
            pid=os.getpid(),
        )


__all__ = ["FamilyAdapter", "LoadedPipeline", "ModelFacts", "generate", "model_directory"]
