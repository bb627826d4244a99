"""The small models that ship with vditscope (diffusers pipeline directories inside the package).

``tiny-wan`` (the default model; video-only self-attention, text by cross-attention) and
``tiny-cogvideox`` (joint text-video self-attention, text first) were trained on this project's
procedural shapes videos with ``vditscope train-tiny``; each directory holds a ``vditscope.json``
with its generation settings, caption vocabulary and evaluation figures.
"""

from __future__ import annotations

from pathlib import Path

from .errors import VditscopeError

ASSETS = Path(__file__).parent / "assets"
SHIPPED_MODELS = ("tiny-wan", "tiny-cogvideox")
DEFAULT_MODEL = "tiny-wan"
# names the command line accepts for the shipped models
MODEL_ALIASES = {"tiny": DEFAULT_MODEL, **{name: name for name in SHIPPED_MODELS}}


def tiny_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of a shipped tiny pipeline by name (``tiny`` and ``tiny-wan`` are the default)."""
    if name not in MODEL_ALIASES:
        raise VditscopeError(f"unknown shipped model {name}; choose one of {', '.join(MODEL_ALIASES)}")
    path = ASSETS / MODEL_ALIASES[name]
    if not (path / "model_index.json").is_file():
        raise VditscopeError(f"the shipped model {name} is missing from {ASSETS} (a broken installation?)")
    return path
