"""Settings every generating command shares: the model, the device, and the pipeline call's size and
schedule (None = the model's vditscope.json, then the pipeline's own defaults)."""

from __future__ import annotations

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
