"""Finished results that the reports render (their own module: a report reads them without importing
the study that produced them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..store.map_names import MapName


@dataclass
class RunData:
    """What a comparison reads from one run directory."""

    path: Path
    run: dict[str, Any]
    maps: dict[MapName, torch.Tensor]
    similarity: pd.DataFrame | None = None


@dataclass
class Comparison:
    """Per matched layer: the mean Pearson correlation of the two runs' maps, and run A's own
    similarity across prompts for scale; ``notes`` say how layers and prompts were matched."""

    table: pd.DataFrame
    run_a: RunData
    run_b: RunData
    notes: list[str] = field(default_factory=list)


@dataclass
class SinkResult:
    """The tables of one model's sink study."""

    kind: str  # "video" or "text"
    model: str
    family: str
    keys: pd.DataFrame
    layers: pd.DataFrame
    where: pd.DataFrame
    consistency: pd.DataFrame
    ablation: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
