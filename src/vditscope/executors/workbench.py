"""A pipeline loaded once by a worker (or by the driver, for the local executor) to serve many jobs."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: the --model argument (path, cached id or shipped name), device and dtype."""

    model: str
    device: str = "auto"
    dtype: str = "float32"

    @classmethod
    def of(cls, model: str, device: str, dtype: str) -> ModelSpec:
        """A spec whose model a worker in another directory finds too (relative paths made absolute)."""
        from ..tiny import MODEL_ALIASES

        path = Path(model).expanduser()
        if model in MODEL_ALIASES or not path.exists():
            return cls(model, device, dtype)
        return cls(str(path.resolve()), device, dtype)

    def on(self, device: str) -> ModelSpec:
        """The same model on another device (a worker's own GPU or its CPUs)."""
        return replace(self, device=device)


@dataclass(frozen=True)
class ModelFacts:
    """What the driver needs to know about the loaded model to plan and label a run."""

    family: str
    text_position: str | None
    layers: int  # distinct layer indices over every attention site
    self_layers: int  # distinct layer indices of self-attention sites
    heads: int | None
    device: str
    host: str  # the worker's machine
    pid: int  # the worker's process


def checked_model_dir(model: str) -> Path:
    """The model's local directory, checked (a supported pipeline) before any worker starts loading it."""
    from ..adapters.loading import check_supported, read_model_index, resolve_model_dir

    model_dir = resolve_model_dir(model)
    check_supported(read_model_index(model_dir), model_dir)
    return model_dir


class Workbench:
    """The loaded pipeline, its adapter and device; jobs are called as ``task(workbench, *inputs)``."""

    def __init__(self, spec: ModelSpec) -> None:
        from ..adapters.loading import load_pipeline, resolve_device

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.pipe, self.adapter, self.model_dir = load_pipeline(spec.model, self.device, spec.dtype)

    def facts(self) -> ModelFacts:
        sites = self.adapter.sites(self.pipe.transformer)
        heads = getattr(self.pipe.transformer.config, "num_attention_heads", None)
        return ModelFacts(
            family=self.adapter.family,
            text_position=self.adapter.text_position,
            layers=len({site.layer for site in sites}),
            self_layers=len({site.layer for site in sites if site.kind == "self"}),
            heads=int(heads) if heads is not None else None,
            device=self.device,
            host=platform.node(),
            pid=os.getpid(),
        )

    def run(self, task: Any, *inputs: Any) -> Any:
        return task(self, *inputs)
