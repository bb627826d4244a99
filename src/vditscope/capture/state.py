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
