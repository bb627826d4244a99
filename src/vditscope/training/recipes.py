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
) -> torch.Tensor:
    """The family's training loss on VAE latents: MSE of the transformer's prediction to its target."""
    batch = recipe.noised(pipe, recipe.model_latents(pipe, latents), generator, shift)
    call = transformer if transformer is not None else pipe.transformer
    prediction = call(**recipe.transformer_kwargs(pipe, batch, embeds), return_dict=False)[0]
    return torch.nn.functional.mse_loss(prediction, batch.target)


def recipe_for(family: str) -> Recipe:
    """The training recipe of a family (ValueError naming the families that have one)."""
    if family not in RECIPES:
        raise ValueError(f"no tiny-model recipe for {family!r}; known: {', '.join(RECIPES)}")
    return RECIPES[family]


__all__ = ["RECIPES", "Noised", "Recipe", "denoising_loss", "recipe_for", "shifted_noise_levels"]
