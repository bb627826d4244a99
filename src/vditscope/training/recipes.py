"""Training with the families' recipes (each lives in its adapter module: ``adapters/wan.py``,
``adapters/cogvideox.py``): the recipe of a family and the denoising loss they share.

Wan: UMT5 text encoder, WanTransformer3DModel (video-only self-attention, text through
cross-attention), flow matching (rectified flow, velocity target). CogVideoX: T5 text encoder,
CogVideoXTransformer3DModel (joint [text, video] self-attention), DDIM with v-prediction and a
zero-terminal-SNR schedule, as the released CogVideoX models. The tiny models use the exact
PixelShuffleVAE; the training side (latent space, noising, the transformer call) also serves
retraining of any pipeline of these families (``retrain.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters import ADAPTERS
from ..adapters.recipe import Noised, Recipe, shifted_noise_levels

RECIPES: dict[str, Recipe] = {name: cls.recipe for name, cls in ADAPTERS.items() if cls.recipe is not None}


def denoising_loss(
    recipe: Recipe,
    pipe: Any,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    generator: torch.Generator,
    shift: float,
    transformer: Any = None,
    groups: list[int] | None = None,
    contrast: float = 0.0,
) -> torch.Tensor:
    """The family's training loss on VAE latents: MSE of the transformer's prediction to its target. ``groups``:
    sizes of consecutive sets of samples that share their noise and noise level (None: every sample its own);
    ``contrast``: weight of a second term, the MSE of the differences between the predictions of a set's members
    to the differences between their targets, which the shared noise leaves noise-free: what tells them apart."""
    x0 = recipe.model_latents(pipe, latents)
    batch = (
        recipe.noised(pipe, x0, generator, shift)
        if groups is None
        else shared_noise(recipe, pipe, x0, generator, shift, groups)
    )
    call = transformer if transformer is not None else pipe.transformer
    prediction = call(**recipe.transformer_kwargs(pipe, batch, embeds), return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(prediction, batch.target)
    if contrast and groups is not None and max(groups) > 1:
        loss = loss + contrast * set_differences_loss(prediction, batch.target, groups)
    return loss


def set_differences_loss(prediction: torch.Tensor, target: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """MSE of every set member's prediction less its set's mean prediction to the same of the targets."""
    errors, start = [], 0
    for size in groups:
        if size > 1:
            p, t = prediction[start : start + size], target[start : start + size]
            errors.append(((p - p.mean(0)) - (t - t.mean(0))).square().flatten(1).mean(1))
        start += size
    return torch.cat(errors).mean()


def shared_noise(
    recipe: Recipe, pipe: Any, x0: torch.Tensor, generator: torch.Generator, shift: float, groups: list[int]
) -> Noised:
    """``recipe.noised`` with each set of ``groups`` drawing the same noise level and noise."""
    parts, start = [], 0
    for size in groups:
        state = generator.get_state()
        for i in range(start, start + size):
            generator.set_state(state)
            parts.append(recipe.noised(pipe, x0[i : i + 1], generator, shift))
        start += size
    return Noised(*(torch.cat([getattr(p, f) for p in parts]) for f in ("noisy", "timestep", "target")))


def recipe_for(family: str) -> Recipe:
    """The training recipe of a family (ValueError naming the families that have one)."""
    if family not in RECIPES:
        raise ValueError(f"no tiny-model recipe for {family!r}; known: {', '.join(RECIPES)}")
    return RECIPES[family]


__all__ = [
    "RECIPES",
    "Noised",
    "Recipe",
    "denoising_loss",
    "recipe_for",
    "set_differences_loss",
    "shared_noise",
    "shifted_noise_levels",
]
