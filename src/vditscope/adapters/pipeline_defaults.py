"""A pipeline's own defaults for the size and schedule of a generation, read from its class's call
signature (no weights loaded), so that steps and frames can be checked before anything runs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

GENERATION_KEYS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")


def pipeline_defaults(model_dir: Path) -> dict[str, Any]:
    """{height, width, num_frames, num_inference_steps, guidance_scale} as the pipeline class named in
    ``model_index.json`` defaults them (keys it leaves to None or lacks are left out; {} when the
    directory is not a diffusers pipeline or names a class diffusers does not have)."""
    import diffusers

    try:
        name = json.loads((Path(model_dir) / "model_index.json").read_text())["_class_name"]
        cls = getattr(diffusers, str(name))
        parameters = inspect.signature(cls.__call__).parameters
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {
        key: parameters[key].default
        for key in GENERATION_KEYS
        if key in parameters and isinstance(parameters[key].default, (int, float))
    }
