"""What the transformer forward being run is, as every hook session sees it (its own module, so that the
session and the records it builds both read it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ForwardState:
    """What the transformer forward being run is: its grid, its batch labels, its step."""

    grid: tuple[int, int, int]
    labels: list[tuple[str, int]]  # (branch, sample index within the branch) per batch element
    generation: int
    step: int
    timestep: float | None


def branch_labels(context_name: str | None, batch: int) -> list[tuple[str, int]]:
    """CFG branch and sample index of each batch element, from the pipeline's cache_context name."""
    if context_name == "cond_uncond" and batch % 2 == 0:
        half = batch // 2
        return [("uncond", i) for i in range(half)] + [("cond", i) for i in range(half)]
    branch = "uncond" if context_name == "uncond" else "cond"
    return [(branch, i) for i in range(batch)]
