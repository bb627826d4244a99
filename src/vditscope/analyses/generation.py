"""One generation of a pipeline with a fixed seed: decoded frames and the final latents."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
