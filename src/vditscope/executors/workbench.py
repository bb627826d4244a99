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
    """What a worker loads: the --model argument (path, cached id or shipped name), device and dtype."""

    model: str
    device: str = "auto"
    dtype: str = "float32"

    @classmethod
    def of(cls, model: str, device: str, dtype: str) -> ModelSpec:
        """A spec whose model a worker in another directory finds too (relative paths made absolute)."""
        path = Path(model).expanduser()
        if model in MODEL_ALIASES or not path.exists():
            return cls(model, device, dtype)
        return cls(str(path.resolve()), device, dtype)

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
        super().__init__(spec.model, spec.device, spec.dtype)
        self.spec = spec

    def run(self, task: Any, *inputs: Any) -> Any:
        return task(self, *inputs)


__all__ = ["ModelFacts", "ModelSpec", "Workbench", "checked_model_dir"]
