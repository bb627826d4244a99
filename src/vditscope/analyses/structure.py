"""Structure of attention in a run: how similar the pooled maps are across prompts, seeds and
denoising steps; what each head does (spatial, temporal, mixed, sink-dominated); where the
text attention goes; which keys are sinks. Pure functions of a run's maps and stats table.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..store.map_names import MapName, parse_map_name
from ..thresholds import SINK_RATIO

# Head classification thresholds (stated in the report). Masses are means over video queries.
SINK_MASS = 0.3  # sink-dominated: one key gets >= 30% of every query's attention on average
SPATIAL_MASS = 0.5  # spatial: >= half of the mass stays in the query's own frame ...
SPATIAL_OVER_TEMPORAL = 2.0  # ... and at least twice the mass on its own position in other frames
TEMPORAL_MASS = 0.25  # temporal: >= 25% on the query's own position in the other frames

HEAD_RULE = (
    f"sink-dominated when the most attended key gets at least {SINK_MASS:.0%} of a query's mass on average; "
    f"else spatial when at least {SPATIAL_MASS:.0%} of a video query's mass stays in its own frame and that is "
    f"at least {SPATIAL_OVER_TEMPORAL:g}x the mass on its own spatial position in the other frames; "
    f"else temporal when at least {TEMPORAL_MASS:.0%} goes to its own position in the other frames; else mixed."
)


def pearson_matrix(vectors: list[np.ndarray]) -> np.ndarray:
    """Pearson correlation of every pair of flattened maps (float64); a constant map gives nan."""
    data = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])
    data = data - data.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(data, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (data @ data.T) / np.outer(norms, norms)


def mean_off_diagonal(matrix: np.ndarray) -> float:
    """Mean of the entries off the diagonal (nan for a 1 x 1 matrix)."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    pairs = [matrix[i, j] for i, j in combinations(range(n), 2)]
    return float(np.nanmean(pairs)) if not np.all(np.isnan(pairs)) else float("nan")


@dataclass
class Similarity:
    """Map similarity per layer along one axis (prompts, seeds or steps)."""

    axis: str
    labels: list[Any]
    matrices: dict[int, np.ndarray]  # layer -> labels x labels, averaged over the other axes
    table: pd.DataFrame  # layer, axis, mean_similarity, groups, map


@dataclass
class Structure:
    """Everything the structure analysis derives from one run."""

    similarity: dict[str, Similarity] = field(default_factory=dict)
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)
    text: pd.DataFrame = field(default_factory=pd.DataFrame)
    sinks: pd.DataFrame = field(default_factory=pd.DataFrame)

    def similarity_table(self) -> pd.DataFrame:
        """One row per layer and axis: the mean off-diagonal Pearson correlation."""
        tables = [s.table for s in self.similarity.values() if not s.table.empty]
        if not tables:
            return pd.DataFrame(columns=["layer", "axis", "mean_similarity", "groups", "map"])
        return pd.concat(tables, ignore_index=True)


def similarity_maps(maps: dict[str, torch.Tensor]) -> tuple[str, dict[MapName, torch.Tensor]]:
    """The self-attention maps similarity is measured on: per-step token maps when the run has them,
    else the frame maps averaged over steps."""
    parsed = {parse_map_name(name): tensor for name, tensor in maps.items()}
    token = {n: t for n, t in parsed.items() if n is not None and n.key == "token_map" and n.kind == "self"}
    if token:
        return "token_map", token
    frame = {
        n: t
        for n, t in parsed.items()
        if n is not None and n.key == "frame_map" and n.kind == "self" and n.step is None
    }
    return "frame_map", frame


def similarity_along(maps: dict[MapName, torch.Tensor], axis: str, source: str) -> Similarity:
    """Per layer: group the maps by every attribute but ``axis`` and correlate within each group
    (all heads of a map concatenated); average the matrices and their off-diagonal means."""
    attribute = {"prompts": "prompt", "seeds": "seed", "steps": "step"}[axis]
    others = [a for a in ("prompt", "seed", "step") if a != attribute]
    labels = sorted({getattr(name, attribute) for name in maps if getattr(name, attribute) is not None})
    groups: dict[tuple, dict[Any, np.ndarray]] = defaultdict(dict)
    for name, tensor in maps.items():
        value = getattr(name, attribute)
        if value is None:
            continue
        groups[(name.layer, *(getattr(name, a) for a in others))][value] = tensor.float().numpy()
    matrices: dict[int, list[np.ndarray]] = defaultdict(list)
    rows = []
    per_layer_means: dict[int, list[float]] = defaultdict(list)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        layer = key[0]
        present = [label for label in labels if label in members]
        matrix = pearson_matrix([members[label] for label in present])
        if len(present) == len(labels):
            matrices[layer].append(matrix)
        per_layer_means[layer].append(mean_off_diagonal(matrix))
    for layer in sorted(per_layer_means):
        rows.append(
            {
                "layer": layer,
                "axis": axis,
                "mean_similarity": float(np.nanmean(per_layer_means[layer])),
                "groups": len(per_layer_means[layer]),
                "map": source,
            }
        )
    return Similarity(
        axis=axis,
        labels=labels,
        matrices={layer: np.mean(items, axis=0) for layer, items in matrices.items()},
        table=pd.DataFrame(rows, columns=["layer", "axis", "mean_similarity", "groups", "map"]),
    )


def classify_heads(stats: pd.DataFrame) -> pd.DataFrame:
    """Per self-attention layer and head (cond branch, mean over generations and steps): the masses the
    rule reads and the class it gives (HEAD_RULE)."""
    data = stats[(stats["kind"] == "self") & (stats["branch"] == "cond")]
    columns = ["layer", "head", "same_frame_mass", "same_position_mass", "sink_mass", "sink_ratio", "entropy", "class"]
    if data.empty:
        return pd.DataFrame(columns=columns)
    heads = (
        data.groupby(["layer", "head"])
        .agg(
            same_frame_mass=("same_frame_mass", "mean"),
            same_position_mass=("same_position_mass", "mean"),
            sink_mass=("sink_mass", "mean"),
            sink_ratio=("sink_ratio", "mean"),
            entropy=("entropy", "mean"),
        )
        .reset_index()
    )
    heads["class"] = [
        head_class(row.same_frame_mass, row.same_position_mass, row.sink_mass) for row in heads.itertuples()
    ]
    return heads[columns]


def head_class(same_frame: float, same_position: float, sink_mass: float) -> str:
    """The class of one head by HEAD_RULE; "unknown" without a video layout (nan masses)."""
    if sink_mass >= SINK_MASS:
        return "sink"
    if np.isnan(same_frame) or np.isnan(same_position):
        return "unknown"
    if same_frame >= SPATIAL_MASS and same_frame >= SPATIAL_OVER_TEMPORAL * same_position:
        return "spatial"
    if same_position >= TEMPORAL_MASS:
        return "temporal"
    return "mixed"


def text_attention(maps: dict[str, torch.Tensor], token_labels: dict[int, list[str]] | None = None) -> pd.DataFrame:
    """Mass video queries give each text token, per layer and site kind (mean over heads, generations
    and captured steps): joint self-attention (text keys of the joint sequence) or cross-attention.
    Columns: layer, kind, token_index, token, mass, share (of that layer's text mass)."""
    sums: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    prompts_of: dict[tuple[str, int], list[int]] = defaultdict(list)
    for name, tensor in maps.items():
        parsed = parse_map_name(name)
        if parsed is None or parsed.key != "text_received" or parsed.step is not None:
            continue
        sums[(parsed.kind, parsed.layer)].append(tensor.float().mean(0).numpy())
        prompts_of[(parsed.kind, parsed.layer)].append(parsed.prompt)
    rows = []
    for (kind, layer), items in sorted(sums.items()):
        length = min(len(item) for item in items)
        mass = np.mean([item[:length] for item in items], axis=0)
        total = float(mass.sum())
        first_prompt = prompts_of[(kind, layer)][0]
        labels = (token_labels or {}).get(first_prompt, [])
        for index, value in enumerate(mass):
            rows.append(
                {
                    "layer": layer,
                    "kind": kind,
                    "token_index": index,
                    "token": labels[index] if index < len(labels) else "",
                    "mass": float(value),
                    "share": float(value) / total if total > 0 else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=["layer", "kind", "token_index", "token", "mass", "share"])


def first_token_share(text: pd.DataFrame) -> pd.DataFrame:
    """Per layer and kind: the share of the text attention that goes to the first text token."""
    if text.empty:
        return pd.DataFrame(columns=["layer", "kind", "first_token_share", "text_tokens"])
    first = text[text["token_index"] == 0][["layer", "kind", "share"]].rename(columns={"share": "first_token_share"})
    counts = text.groupby(["layer", "kind"]).size().rename("text_tokens").reset_index()
    return first.merge(counts, on=["layer", "kind"]).reset_index(drop=True)


def sink_table(stats: pd.DataFrame, layout: dict[str, Any] | None) -> pd.DataFrame:
    """Per self-attention layer and head: the most attended key, how often it is the same key across
    generations and steps, where it sits, its mass ratio to the median key, and whether it is a sink."""
    data = stats[(stats["kind"] == "self") & (stats["branch"] == "cond")]
    columns = ["layer", "head", "key", "where", "consistency", "sink_ratio", "sink_mass", "sink"]
    if data.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (layer, head), group in data.groupby(["layer", "head"]):
        counts = Counter(int(i) for i in group["sink_index"])
        key, hits = counts.most_common(1)[0]
        ratio = float(group["sink_ratio"].mean())
        rows.append(
            {
                "layer": int(layer),
                "head": int(head),
                "key": key,
                "where": token_place(key, layout),
                "consistency": hits / len(group),
                "sink_ratio": ratio,
                "sink_mass": float(group["sink_mass"].mean()),
                "sink": bool(ratio >= SINK_RATIO),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def token_place(index: int, layout: dict[str, Any] | None) -> str:
    """'text 0', 'video f2 y3 x1' or 'other' for a key index of a self-attention call."""
    if not layout or not layout.get("grid"):
        return ""
    frames, height, width = layout["grid"]
    text_tokens = layout.get("text_tokens") or 0
    video_start = text_tokens if layout.get("text_position") == "before" else 0
    if layout.get("text_position") == "before" and index < text_tokens:
        return f"text {index}"
    rel = index - video_start
    if 0 <= rel < frames * height * width:
        frame, rest = divmod(rel, height * width)
        y, x = divmod(rest, width)
        return f"video f{frame} y{y} x{x}"
    if layout.get("text_position") == "after" and 0 <= index - frames * height * width < text_tokens:
        return f"text {index - frames * height * width}"
    return "other"


def analyze_structure(
    stats: pd.DataFrame,
    maps: dict[str, torch.Tensor],
    layout: dict[str, Any] | None = None,
    token_labels: dict[int, list[str]] | None = None,
) -> Structure:
    """The whole structure analysis of a run."""
    source, chosen = similarity_maps(maps)
    similarity = {axis: similarity_along(chosen, axis, source) for axis in ("prompts", "seeds", "steps")}
    return Structure(
        similarity=similarity,
        heads=classify_heads(stats),
        text=text_attention(maps, token_labels),
        sinks=sink_table(stats, layout),
    )
