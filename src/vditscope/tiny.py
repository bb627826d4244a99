"""The small models that ship with vditscope, as directories inside the package.

Video pipelines (diffusers directories, ``SHIPPED_MODELS``): ``tiny-wan`` (the default model;
video-only self-attention, text by cross-attention) and ``tiny-cogvideox`` (joint text-video
self-attention, text first) were trained on this project's procedural shapes videos with
``vditscope train-tiny``; each directory holds a ``vditscope.json`` with its generation
settings, caption vocabulary and evaluation figures.

Text models (transformers directories, ``TEXT_MODELS``): ``tiny-lm``, a small Llama trained on
Python's pydoc topics (``vditscope.training.tiny_lm``) in which attention sinks on the first
token (``<|bos|>``) have emerged, to compare video sinks with those of a language model offline.
"""

from __future__ import annotations

from pathlib import Path

from .errors import VditscopeError

ASSETS = Path(__file__).parent / "assets"
SHIPPED_MODELS = ("tiny-wan", "tiny-cogvideox")
TEXT_MODELS = ("tiny-lm",)
DEFAULT_MODEL = "tiny-wan"
# names the command line accepts for the shipped models
MODEL_ALIASES = {"tiny": DEFAULT_MODEL, **{name: name for name in SHIPPED_MODELS + TEXT_MODELS}}


def tiny_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of a shipped tiny model by name (``tiny`` and ``tiny-wan`` are the default pipeline).

    Pipelines must hold a ``model_index.json``, text models (``TEXT_MODELS``) a ``config.json``.
    """
    if name not in MODEL_ALIASES:
        raise VditscopeError(f"unknown shipped model {name}; choose one of {', '.join(MODEL_ALIASES)}")
    path = ASSETS / MODEL_ALIASES[name]
    marker = "config.json" if MODEL_ALIASES[name] in TEXT_MODELS else "model_index.json"
    if not (path / marker).is_file():
        raise VditscopeError(f"the shipped model {name} is missing from {ASSETS} (a broken installation?)")
    return path
