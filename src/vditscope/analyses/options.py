"""Settings every generating command shares: the model, the device, and the pipeline call's size and
schedule (None = the model's vditscope.json, then the pipeline's own defaults)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import VditscopeError


@dataclass
class GenerationOptions:
    """Which model, where, and how large and long a generation is."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    generation_overrides: dict[str, Any] = field(default_factory=dict)

    def generation_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The pipeline call's keyword arguments: the model's generation settings, then these options."""
        generation = dict(settings.get("generation", {}))
        for key in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale"):
            value = getattr(self, key)
            if value is not None:
                generation[key] = value
        generation.update(self.generation_overrides)
        for key in ("height", "width", "num_frames", "num_inference_steps"):
            if key in generation and int(generation[key]) < 1:
                raise VditscopeError(f"{key} must be positive, got {generation[key]}")
        return generation


def checked_layers(layers: Iterable[int] | None, num_layers: int, what: str = "layer") -> set[int] | None:
    """The chosen layer indices as a set (None = all), checked against the model's ``num_layers``
    before anything is generated or written."""
    if layers is None:
        return None
    chosen = {int(layer) for layer in layers}
    if not chosen:
        raise VditscopeError(f"the {what} set is empty")
    bad = sorted(layer for layer in chosen if not 0 <= layer < num_layers)
    if bad:
        raise VditscopeError(f"layer {bad[0]} is out of range: the model has {num_layers} layers (0-{num_layers - 1})")
    return chosen
