"""A pipeline loaded once by a worker (or by the driver, for the local executor) to serve many jobs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..adapters.loaded import LoadedPipeline, ModelFacts
from ..adapters.loading import check_supported, read_model_index, resolve_model_dir
from ..tiny import MODEL_ALIASES


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: the --model argument (path, cached id or shipped name) and how it is placed: device,
    dtype, offload, compile and context parallelism (``adapters.placement.Placement``)."""

    model: str
    device: str = "auto"
    dtype: str = "float32"
    offload: str = "none"
    compile: str = "none"
    context_parallel: int = 1

    @classmethod
    def of(cls, model: str, options: Any) -> ModelSpec:
        """The spec of ``model`` placed as a command's ``options`` (GenerationOptions) say, found by a worker in
        another directory too (relative paths made absolute)."""
        path = Path(model).expanduser()
        if model not in MODEL_ALIASES and path.exists():
            model = str(path.resolve())
        placed = ("device", "dtype", "offload", "compile", "context_parallel")
        return cls(model, **{name: getattr(options, name) for name in placed})

    def on(self, device: str) -> ModelSpec:
        """The same model on another device (a worker's own GPU or its CPUs)."""
        return replace(self, device=device)


def checked_model_dir(model: str) -> Path:
    """The model's local directory, checked (a supported pipeline) before any worker starts loading it."""
    model_dir = resolve_model_dir(model)
    check_supported(read_model_index(model_dir), model_dir)
    return model_dir


class Workbench(LoadedPipeline):
    """The pipeline a worker loaded for the jobs of one command; jobs are called as ``task(workbench, *inputs)``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec.model, spec.device, spec.dtype, spec.offload, spec.compile, spec.context_parallel)
        self.spec = spec

    def run(self, task: Any, *inputs: Any) -> Any:
        return task(self, *inputs)


__all__ = ["ModelFacts", "ModelSpec", "Workbench", "checked_model_dir"]
