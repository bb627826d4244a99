"""Settings every generating command shares: the model, the device, and the pipeline call's size and
schedule (None = the model's vditscope.json, then the pipeline's own defaults)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import VditscopeError


@dataclass
class GenerationOptions:
    """Which model, where, and how large and long a generation is."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    offload: str = "none"  # weights on the CPU between uses: none, model, sequential or group (load_pipeline)
    compile: str = "none"  # the transformer compiled: none, regional (per block) or model (adapters.placement)
    context_parallel: int = 1  # Ulysses degree over the processes of a torchrun launch (adapters.placement)
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    generation_overrides: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # --out may be a non-empty folder (vditscope still removes nothing of yours)

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


@dataclass
class ExecutorOptions(GenerationOptions):
    """The generation options of a long command, plus where its jobs run: ``executor`` "local" (this
    process) or "ray" (the workers of a Ray cluster at ``address``; None: this node's, started when
    there is none). Checked by ``executors.executor_for`` before anything is loaded or written."""

    executor: str = "local"
    address: str | None = None


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


def checked_prompts_and_seeds(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    """The prompts (or texts) and seeds every generating command takes: no empty text, at least one
    seed, seeds in torch's range, nothing given twice."""
    if any(not str(p).strip() for p in prompts):
        raise VditscopeError("empty prompt: every --prompt (or --text) needs text")
    if not seeds:
        raise VditscopeError("no seeds given")
    for seed in seeds:
        checked_seed(seed)
    checked_unique(seeds, "--seed")
    checked_unique(prompts, "--prompt")


def checked_unique(values: Iterable[Any], option: str) -> None:
    """Refuse a value given twice (``--seed 0 --seed 0``): it would compute the same thing twice."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise VditscopeError(f"{option} {value} is given twice")
        seen.add(value)


def checked_seed(seed: int, option: str = "--seed") -> int:
    """A seed torch's generators accept: 0 <= seed < 2**63."""
    if not 0 <= int(seed) < 2**63:
        raise VditscopeError(f"{option} {seed} is out of range: use 0 <= seed < 2**63")
    return int(seed)


def checked_steps(steps: Iterable[int] | None, total: int | None, option: str = "--capture-steps") -> None:
    """Denoising step indices against the schedule's length, before anything is generated."""
    if steps is None or total is None:
        return
    bad = [int(s) for s in steps if not 0 <= int(s) < total]
    if bad:
        raise VditscopeError(f"{option}: step {bad[0]} is out of range: the schedule has {total} steps (0-{total - 1})")
