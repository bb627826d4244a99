"""Load a video pipeline from a local directory or the local Hugging Face cache (never the hub)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import VditscopeError
from ..tiny import MODEL_ALIASES, tiny_model_dir
from . import ADAPTERS, adapter_for
from .base import FamilyAdapter, UnsupportedModelError
from .model_files import check_pipeline_weights, vet_pipeline_dir
from .placement import Placement

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_model_dir(model: str | Path) -> Path:
    """A local pipeline directory for a path or a model id already in the local HF cache."""
    if str(model) in MODEL_ALIASES:
        return tiny_model_dir(str(model))
    path = Path(model).expanduser()
    if path.exists():
        return path
    if "/" in str(model) and not str(model).startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(model), local_files_only=True))
        except Exception as exc:
            raise VditscopeError(
                f"model {model} is not a local directory and not in the local Hugging Face cache"
            ) from exc
    raise VditscopeError(f"no such model directory: {model}")


def read_model_index(model_dir: Path) -> dict[str, Any]:
    """The pipeline's model_index.json, with clear errors when it is missing or corrupt."""
    if not model_dir.is_dir():
        raise VditscopeError(f"{model_dir} is not a directory")
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise VditscopeError(f"{model_dir} is not a diffusers pipeline directory (no model_index.json)")
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VditscopeError(f"{index} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "_class_name" not in data:
        raise VditscopeError(f"{index} does not name a pipeline class")
    return data


def check_supported(index: dict[str, Any], model_dir: Path) -> None:
    """Fail early, before loading weights, when the transformer is not of a supported family."""
    entry = index.get("transformer")
    class_name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
    known = {name for cls in ADAPTERS.values() for name in cls.model_classes}
    if class_name not in known:
        families = ", ".join(ADAPTERS)
        raise VditscopeError(
            f"{model_dir} is not a supported video pipeline (transformer {class_name or 'missing'}); "
            f"supported families: {families}"
        )


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide the per-component loading bars and load-time warnings (vditscope shows its own progress)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # diffusers warns that a PixelShuffleVAE is not the AutoencoderKLWan the pipeline names
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA GPU is visible, else 'cpu'; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def vetted_index(model_dir: Path) -> dict[str, Any]:
    """The model_index.json of a pipeline directory that passed every check made before loading (supported
    family, no code or pickles, configs that fit their weights: ``model_files``), reading files only."""
    index = read_model_index(model_dir)
    check_supported(index, model_dir)
    vet_pipeline_dir(model_dir, index)
    with quiet_loading():
        check_pipeline_weights(model_dir, index)
    return index


def load_pipeline(
    model: str | Path,
    device: str = "cpu",
    dtype: str = "float32",
    offload: str = "none",
    compile: str = "none",
    context_parallel: int = 1,
) -> tuple[Any, FamilyAdapter, Path]:
    """Load a diffusers video pipeline offline; returns (pipeline, adapter, directory). ``offload``
    (``placement.OFFLOADS``) keeps weights on the CPU between uses, for models larger than the device's memory;
    ``compile`` and ``context_parallel`` (a torchrun launch of that many processes) as ``placement.Placement``
    says.

    The directory is untrusted input: before any weight is loaded, ``model_files`` refuses pickled
    weights, components from modules other than diffusers, transformers and vditscope's own models,
    code shipped with the model, and a config that does not fit its weights; diffusers then reads
    safetensors only and runs no code from the directory.
    """
    from diffusers import DiffusionPipeline

    if dtype not in DTYPES:
        raise VditscopeError(f"unknown dtype {dtype}; choose one of {', '.join(DTYPES)}")
    placement = Placement(device, offload, compile, context_parallel)
    placement.check()
    model_dir = resolve_model_dir(model)
    vetted_index(model_dir)
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(
                model_dir,
                dtype=DTYPES[dtype],
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
            )
    except VditscopeError:
        raise
    except Exception as exc:
        raise VditscopeError(f"could not load the pipeline in {model_dir}: {str(exc).splitlines()[0]}") from exc
    try:
        adapter = adapter_for(pipe.transformer)
    except UnsupportedModelError as exc:
        raise VditscopeError(str(exc)) from exc
    try:
        placement.apply(pipe)
    except VditscopeError:
        raise
    except Exception as exc:
        raise VditscopeError(f"could not move the pipeline to {device}: {str(exc).splitlines()[0]}") from exc
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, adapter, model_dir
