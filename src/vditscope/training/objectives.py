"""What retraining minimizes: distillation from the frozen original model, or flow matching on videos.

Both draw every random choice of a step from one generator seeded by (seed, step), so a resumed
run sees exactly the batches an uninterrupted run sees. Prompt embeddings are computed once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .clips import load_clips
from .recipes import Recipe, denoising_loss

# the share of samples that use the empty prompt: classifier-free guidance calls the model once
# with the prompt and once without, so the retrained blocks must serve both branches
DISTILL_UNCONDITIONAL = 0.5
# caption dropout of flow-matching training (keeps the unconditional branch trained)
FLOW_CAPTION_DROPOUT = 0.1
# at most this many prompts are built from a model's caption vocabulary
MAX_VOCABULARY_PROMPTS = 256


def vocabulary_prompts(settings: dict[str, Any]) -> list[str]:
    """Every caption the model's vditscope.json template and vocabulary make (the distillation
    prompts of the shipped models), or [] when it has none."""
    template, vocabulary = settings.get("caption"), settings.get("vocabulary")
    if not template or not vocabulary:
        return []
    fields = re.findall(r"{(\w+)}", template)
    if not fields or any(not vocabulary.get(f"{name}s") for name in fields):
        return []
    combos = itertools.islice(itertools.product(*(vocabulary[f"{name}s"] for name in fields)), MAX_VOCABULARY_PROMPTS)
    return [template.format(**dict(zip(fields, words, strict=True))) for words in combos]


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], device: str, max_sequence_length: int | None) -> torch.Tensor:
    """Text embeddings (P, L, D) of ``prompts`` as the pipeline computes them for generation."""
    kwargs = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
    chunks = [
        pipe.encode_prompt(
            list(prompts[i : i + 16]), do_classifier_free_guidance=False, device=torch.device(device), **kwargs
        )[0]
        for i in range(0, len(prompts), 16)
    ]
    return torch.cat(chunks)


def _pick_embeds(
    embeds: torch.Tensor, empty: torch.Tensor, batch: int, share_empty: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (indices into ``embeds``, their embeddings), the empty prompt with probability share_empty."""
    index = torch.randint(len(embeds), (batch,), generator=generator)
    unconditional = (torch.rand(batch, generator=generator) < share_empty).to(embeds.device)
    chosen = torch.where(unconditional.view(-1, 1, 1), empty.expand(batch, -1, -1), embeds[index.to(embeds.device)])
    return index, chosen


class PrefixReplay:
    """Reuse the frozen blocks before the first retrained one: the teacher's and the student's calls
    are identical up to there, so the student call replays the outputs the teacher call recorded
    instead of recomputing them (retraining the last 2 of 48 blocks then costs ~1 forward, not 2)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = list(blocks)
        self.outputs: list[list[Any]] = [[] for _ in self.blocks]

    @contextmanager
    def record(self) -> Iterator[None]:
        """Keep every output of the prefix blocks during the block."""
        handles = [
            block.register_forward_hook(lambda _m, _a, output, kept=kept: kept.append(output))
            for block, kept in zip(self.blocks, self.outputs, strict=True)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Make each prefix block return its recorded outputs, in call order, without computing."""
        for block, kept in zip(self.blocks, self.outputs, strict=True):
            block.forward = lambda *_args, kept=kept, **_kwargs: kept.pop(0)
        try:
            yield
        finally:
            for block, kept in zip(self.blocks, self.outputs, strict=True):
                del block.forward
                kept.clear()


class DistillObjective:
    """MSE between the student's prediction and the frozen original model's on random noisy latents.

    The clean latents are standard normal samples in the transformer's latent space, noised at
    the family's training noise levels; no data is needed. The teacher is the same transformer
    called with the original weights of the retrained blocks (``teacher``: name -> tensor),
    which is the original model without a second copy of it in memory. ``prefix`` are the
    frozen blocks before the first retrained one (see ``PrefixReplay``).
    """

    def __init__(
        self,
        pipe: Any,
        recipe: Recipe,
        teacher: dict[str, torch.Tensor],
        embeds: torch.Tensor,
        empty: torch.Tensor,
        latent_shape: tuple[int, ...],
        shift: float,
        prefix: Sequence[nn.Module] = (),
    ) -> None:
        self.pipe, self.recipe, self.teacher = pipe, recipe, teacher
        self.embeds, self.empty, self.latent_shape, self.shift = embeds, empty, latent_shape, shift
        self.prefix = PrefixReplay(prefix)

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        transformer = self.pipe.transformer
        batch = self.latent_shape[0]
        _, embeds = _pick_embeds(self.embeds, self.empty, batch, DISTILL_UNCONDITIONAL, generator)
        x0 = torch.randn(self.latent_shape, generator=generator).to(device=embeds.device, dtype=transformer.dtype)
        noised = self.recipe.noised(self.pipe, x0, generator, self.shift)
        kwargs = {**self.recipe.transformer_kwargs(self.pipe, noised, embeds), "return_dict": False}
        with torch.no_grad(), self.prefix.record():
            target = torch.func.functional_call(transformer, self.teacher, (), kwargs)[0]
        with self.prefix.replay():
            prediction = transformer(**kwargs)[0]
        return torch.nn.functional.mse_loss(prediction.float(), target.float())


class FlowObjective:
    """The family's own denoising loss (flow matching / v-prediction) on a folder of captioned videos."""

    def __init__(
        self,
        pipe: Any,
        recipe: Recipe,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        empty: torch.Tensor,
        batch: int,
        shift: float,
    ) -> None:
        self.pipe, self.recipe, self.latents = pipe, recipe, latents
        self.embeds, self.empty, self.batch, self.shift = embeds, empty, batch, shift

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        index, embeds = _pick_embeds(self.embeds, self.empty, self.batch, FLOW_CAPTION_DROPOUT, generator)
        latents = self.latents[index.to(self.latents.device)]
        return denoising_loss(self.recipe, self.pipe, latents, embeds, generator, self.shift)


@torch.no_grad()
def encode_clips(pipe: Any, folder: Path, size: tuple[int, int, int], device: str) -> tuple[torch.Tensor, list[str]]:
    """VAE latents (N, C, F, H, W) of the folder's videos (the distribution's mode) and their captions."""
    height, width, num_frames = size
    clips = load_clips(folder, height, width, num_frames)
    dtype = pipe.vae.dtype
    latents = []
    for clip in clips:
        dist = pipe.vae.encode(clip.video[None].to(device=device, dtype=dtype)).latent_dist
        latents.append(dist.mode())
    return torch.cat(latents), [clip.caption for clip in clips]
