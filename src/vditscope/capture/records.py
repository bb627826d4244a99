"""Records of observed attention calls, and the capture table built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..layout import TokenLayout
from ..stats import TOP_FRACTIONS, AttentionStats
from ..stats.key_stats import sink_baseline
from .state import ForwardState

if TYPE_CHECKING:
    from ..adapters import AttentionSite

TOP_COLUMNS = [f"top{round(f * 100)}" for f in TOP_FRACTIONS]
TABLE_COLUMNS = [
    "generation",
    "step",
    "branch",
    "sample",
    "layer",
    "kind",
    "site",
    "head",
    "timestep",
    "tokens",
    "entropy",
    "text_mass",
    "sink_ratio",
    "sink_index",
    "sink_mass",
    "same_frame_mass",
    "same_position_mass",
    *TOP_COLUMNS,
]
MAP_KEYS = ("frame_map", "locality_time", "locality_space", "text_received", "token_map")
# kinds whose keys are all of one sort: (the map of the mass each key receives, whether the keys are text)
KEYS_ONLY = {"cross": ("text_received", True), "image": ("image_received", False)}


@dataclass
class CallRecord:
    """Per-head statistics of one batch element of one observed attention call."""

    generation: int
    step: int
    branch: str
    sample: int
    layer: int
    kind: str  # "self", "cross" (text keys) or "image" (the CLIP image tokens of an I2V model)
    site: str  # the module's name; ``transformer_2.`` before it for a Wan 2.2 pipeline's low-noise expert
    timestep: float | None
    tokens: int
    layout: TokenLayout | None
    entropy: np.ndarray  # (H,) mean entropy over queries, nats
    text_mass: np.ndarray  # (H,) mean mass of video queries on text keys
    sink_ratio: np.ndarray  # (H,) max received mass / sink baseline (median key, floored at 1/N)
    sink_index: np.ndarray  # (H,) key receiving the most mass
    sink_mass: np.ndarray  # (H,) mean mass a query puts on that key
    same_frame_mass: np.ndarray  # (H,) mean mass of video queries on their own frame
    same_position_mass: np.ndarray  # (H,) ... on their own spatial position in the other frames
    top_mass: np.ndarray  # (H, 5) mean mass of the top 1/5/10/20/50% keys
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    probes: dict[str, np.ndarray] = field(default_factory=dict)  # capture(probes=...): your statistics

    @property
    def heads(self) -> int:
        return len(self.entropy)


def sink_ratios(received: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max / the sink baseline, argmax) along the last axis: the baseline is the median over the keys with any
    mass (masked keys get none), floored at the uniform share (``key_stats.sink_baseline``)."""
    peak, index = received.max(dim=-1)
    return peak / sink_baseline(received), index


def records_from_stats(
    stats: AttentionStats,
    site: AttentionSite,
    state: ForwardState,
    labels: list[tuple[str, int]],
    layout: TokenLayout | None,
    *,
    keep_maps: bool,
) -> list[CallRecord]:
    """One record per batch element of an SDPA call (maps copied to the CPU when ``keep_maps``; a cross
    call keeps the mass each text key receives, ``text_received``, an image call ``image_received``)."""
    num_queries = stats["entropy"].shape[-1]
    ratio, index = sink_ratios(stats["received"])
    heads = stats["entropy"].shape[1]
    records = []
    for b, (branch, sample) in enumerate(labels):
        nan = np.full(heads, np.nan, dtype=np.float32)
        maps: dict[str, torch.Tensor] = {}
        if site.kind in KEYS_ONLY:  # every key is a text token (cross), or every key an image token (image)
            map_name, all_text = KEYS_ONLY[site.kind]
            text_mass = np.full(heads, float(all_text), dtype=np.float32)
            same_frame = same_position = nan
            if keep_maps:
                maps[map_name] = (stats["received"][b] / num_queries).cpu()
        elif layout is not None:
            text_mass = stats["text_mass"][b].cpu().numpy()
            same_frame = stats["locality_time"][b, :, 0].cpu().numpy()
            same_position = stats["same_position_mass"][b].cpu().numpy()
            if keep_maps:
                maps = {key: stats[key][b].cpu() for key in MAP_KEYS if key in stats}
        else:
            text_mass = same_frame = same_position = nan
        top = (
            stats["topk_mass"][b].cpu().numpy()
            if "topk_mass" in stats
            else np.full((heads, len(TOP_FRACTIONS)), np.nan)
        )
        records.append(
            CallRecord(
                generation=state.generation,
                step=state.step,
                branch=branch,
                sample=sample,
                layer=site.layer,
                kind=site.kind,
                site=site.name,
                timestep=state.timestep,
                tokens=int(stats["received"].shape[-1]),
                layout=layout,
                entropy=stats["entropy"][b].mean(-1).cpu().numpy(),
                text_mass=text_mass,
                sink_ratio=ratio[b].cpu().numpy(),
                sink_index=index[b].cpu().numpy(),
                sink_mass=(stats["received"][b].amax(-1) / num_queries).cpu().numpy(),
                same_frame_mass=same_frame,
                same_position_mass=same_position,
                top_mass=top,
                maps=maps,
            )
        )
    return records


def records_table(records: list[CallRecord]) -> Any:
    """The capture table (pandas DataFrame), one row per record and head, columns TABLE_COLUMNS."""
    import pandas as pd

    if not records:
        return pd.DataFrame({name: [] for name in TABLE_COLUMNS})
    heads = np.concatenate([np.arange(r.heads) for r in records])

    def per_head(attr: str) -> np.ndarray:
        return np.concatenate([np.repeat(getattr(r, attr), r.heads) for r in records])

    def values(attr: str) -> np.ndarray:
        return np.concatenate([getattr(r, attr) for r in records])

    top = np.concatenate([r.top_mass for r in records])
    columns: dict[str, Any] = {
        "generation": per_head("generation"),
        "step": per_head("step"),
        "branch": per_head("branch"),
        "sample": per_head("sample"),
        "layer": per_head("layer"),
        "kind": per_head("kind"),
        "site": per_head("site"),
        "head": heads,
        "timestep": np.concatenate([np.repeat(np.nan if r.timestep is None else r.timestep, r.heads) for r in records]),
        "tokens": per_head("tokens"),
        "entropy": values("entropy"),
        "text_mass": values("text_mass"),
        "sink_ratio": values("sink_ratio"),
        "sink_index": values("sink_index"),
        "sink_mass": values("sink_mass"),
        "same_frame_mass": values("same_frame_mass"),
        "same_position_mass": values("same_position_mass"),
    }
    for i, name in enumerate(TOP_COLUMNS):
        columns[name] = top[:, i]
    probes = per_head_probes(records, columns)
    return pd.DataFrame(columns)[TABLE_COLUMNS + probes]


def per_head_probes(records: list[CallRecord], columns: dict[str, Any]) -> list[str]:
    """Add to ``columns`` each probe that gave every record one value per head (NaN where a record has none,
    e.g. a probe that only some calls answer); returns their names in first-seen order."""
    names = list(dict.fromkeys(name for r in records for name in r.probes))
    kept = []
    for name in names:
        values = [r.probes.get(name) for r in records]
        if all(v is None or np.shape(v) == (r.heads,) for v, r in zip(values, records, strict=True)):
            columns[name] = np.concatenate(
                [np.full(r.heads, np.nan) if v is None else np.asarray(v, dtype=np.float64) for v, r in
                 zip(values, records, strict=True)]
            )  # fmt: skip
            kept.append(name)
    return kept
