"""Sink tables from per-key statistics: every key (or the top keys) per layer and head, where the
sinks sit, how consistent they are across steps and prompts, and a per-layer summary.

A sink is a key whose received attention is at least ``threshold`` times the median key's of the
same layer and head, the median floored at the uniform share 1 / keys (``SINK_MEDIAN_FLOOR``: in a
concentrated head the median key gets ~0 and ordinary keys would pass by the thousand). Both are
counted per query that can see the key (``ratio_visible``: a causal model's first token is seen by
every query, so the plain mean over queries, ``ratio``, gives it about ln(N) x the median under
uniform attention; without masks the two are equal). Default 10x, as in the paper's
"disproportionate share"; 5x finds weaker sinks, 50-100x only the extreme ones that dominate whole
heads.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from ..layout import TokenLayout
from ..stats.key_stats import KeyStats, sink_baseline
from ..thresholds import SINK_RATIO

SINK_THRESHOLD = SINK_RATIO
KEY_COLUMNS = [
    "layer",
    "head",
    "rank",
    "token_index",
    "token",
    "place",
    "token_kind",
    "frame",
    "row",
    "col",
    "received",
    "received_visible",
    "ratio",
    "ratio_visible",
    "sink",
    "key_norm",
    "value_norm",
    "key_norm_ratio",
    "value_norm_ratio",
]


@dataclass(frozen=True)
class KeyLabel:
    """What a key index is: its token string, text/video place, kind and video coordinates."""

    token: str
    place: str  # "text", "video" or "other"
    kind: str  # "first", "special", "punctuation", "whitespace", "word", "video"
    frame: int = -1
    row: int = -1
    col: int = -1


def token_kind(token: str, index: int, special: set[str]) -> str:
    """Class of a text token for sink reports: the first token, special tokens (</s>, <pad>, BOS),
    punctuation or separators, whitespace, and words."""
    if index == 0:
        return "first"
    if token in special:
        return "special"
    stripped = token.replace("Ġ", "").replace("▁", "").replace("Ċ", "\n")
    if not stripped.strip():
        return "whitespace"
    if all(ch in string.punctuation for ch in stripped.strip()):
        return "punctuation"
    return "word"


def text_labels(tokens: Sequence[str], special: set[str]) -> list[KeyLabel]:
    """Labels of the keys of a text-only sequence."""
    return [KeyLabel(token, "text", token_kind(token, i, special)) for i, token in enumerate(tokens)]


def video_labels(
    layout: TokenLayout | None, num_keys: int, text_tokens: Sequence[str], special: set[str]
) -> list[KeyLabel]:
    """Labels of the keys of a video self-attention call: text tokens (joint attention) and video
    tokens by frame, row and column."""
    labels = [KeyLabel(f"key {i}", "other", "other") for i in range(num_keys)]
    if layout is None:
        return labels
    per_frame = layout.height * layout.width
    for rel in range(layout.num_video):
        frame, rest = divmod(rel, per_frame)
        row, col = divmod(rest, layout.width)
        labels[layout.video_start + rel] = KeyLabel(f"f{frame} y{row} x{col}", "video", "video", frame, row, col)
    if layout.text is not None:
        start, stop = layout.text
        for i in range(stop - start):
            token = text_tokens[i] if i < len(text_tokens) else f"text {i}"
            kind = token_kind(token, -1, special) if i else ("special" if token in special else "first")
            labels[start + i] = KeyLabel(token, "text", kind)
    return labels


def key_table(
    stats: KeyStats,
    layer: int,
    labels: Sequence[KeyLabel],
    *,
    keep: int | None,
    threshold: float = SINK_THRESHOLD,
) -> pd.DataFrame:
    """Rows (KEY_COLUMNS) for batch element 0 of one layer's key statistics: every key when ``keep``
    is None, else the ``keep`` most attended keys of each head."""
    received = stats.received[0]
    heads, num_keys = received.shape
    median = sink_baseline(received).unsqueeze(-1)
    count = num_keys if keep is None else min(keep, num_keys)
    mass, index = received.topk(count, dim=-1)
    visible = stats.received_visible[0].gather(-1, index)
    key_norm = stats.key_norm[0]
    value_norm = stats.value_norm[0]
    key_median = key_norm.median(dim=-1).values.unsqueeze(-1)
    value_median = value_norm.median(dim=-1).values.unsqueeze(-1)
    flat = index.reshape(-1).numpy()
    chosen = [labels[i] for i in flat]
    ratio = (mass / median).reshape(-1).numpy()
    sinks = stats.sinks(threshold)[0].gather(-1, index).reshape(-1).numpy()
    fair = stats.received_visible[0]
    ratio_visible = (visible / sink_baseline(fair).unsqueeze(-1)).reshape(-1).numpy()
    table = pd.DataFrame(
        {
            "layer": np.full(heads * count, layer),
            "head": np.repeat(np.arange(heads), count),
            "rank": np.tile(np.arange(count), heads),
            "token_index": flat,
            "token": [label.token for label in chosen],
            "place": [label.place for label in chosen],
            "token_kind": [label.kind for label in chosen],
            "frame": [label.frame for label in chosen],
            "row": [label.row for label in chosen],
            "col": [label.col for label in chosen],
            "received": mass.reshape(-1).numpy(),
            "received_visible": visible.reshape(-1).numpy(),
            "ratio": ratio,
            "ratio_visible": ratio_visible,
            "sink": sinks,
            "key_norm": key_norm.gather(-1, index).reshape(-1).numpy(),
            "value_norm": value_norm.gather(-1, index).reshape(-1).numpy(),
            "key_norm_ratio": (key_norm.gather(-1, index) / key_median).reshape(-1).numpy(),
            "value_norm_ratio": (value_norm.gather(-1, index) / value_median).reshape(-1).numpy(),
        }
    )
    return table[KEY_COLUMNS]


def jaccard(a: set[int], b: set[int]) -> float:
    """|a & b| / |a | b|; NaN when both are empty (no sink to agree on)."""
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def consistency(calls: pd.DataFrame, threshold: float = SINK_THRESHOLD) -> pd.DataFrame:
    """Per layer: mean Jaccard overlap of the per-head sink sets between the steps of a generation
    ("steps") and between the generations at the same step ("prompts"); cond branch, sample 0.
    Sink sets are capped at the captured top keys per head."""
    cond = calls[(calls["branch"] == "cond") & (calls["sample"] == 0)]
    sinks = cond[cond["ratio"] >= threshold]
    sets: dict[tuple[int, int, int, int], set[int]] = {}
    for key, group in sinks.groupby(["layer", "head", "generation", "step"]):
        sets[key] = set(group["token_index"].tolist())
    rows = []
    for layer, layer_calls in cond.groupby("layer"):
        keys = layer_calls[["head", "generation", "step"]].drop_duplicates().itertuples(index=False)
        grid: dict[tuple[int, int, int], set[int]] = {(h, g, s): sets.get((layer, h, g, s), set()) for h, g, s in keys}
        by_steps: list[float] = []
        by_prompts: list[float] = []
        heads = sorted({h for h, _, _ in grid})
        generations = sorted({g for _, g, _ in grid})
        steps = sorted({s for _, _, s in grid})
        for h in heads:
            for g in generations:
                for s1, s2 in combinations(steps, 2):
                    by_steps.append(jaccard(grid.get((h, g, s1), set()), grid.get((h, g, s2), set())))
            for s in steps:
                for g1, g2 in combinations(generations, 2):
                    by_prompts.append(jaccard(grid.get((h, g1, s), set()), grid.get((h, g2, s), set())))
        rows.append(
            {
                "layer": int(layer),
                "steps_overlap": _nanmean(by_steps),
                "prompts_overlap": _nanmean(by_prompts),
                "step_sink_heads": float(np.mean([bool(grid[key]) for key in grid]) if grid else float("nan")),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "steps_overlap", "prompts_overlap", "step_sink_heads"])


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def layer_summary(keys: pd.DataFrame, heads: int) -> pd.DataFrame:
    """Per layer: heads with a sink, the largest ratio, the attention share the sinks take, where
    they sit, and their key and value norms relative to the median key (from a key table)."""
    rows = []
    for layer, group in keys.groupby("layer"):
        sinks = group[group["sink"]]
        top = group[group["rank"] == 0]
        rows.append(
            {
                "layer": int(layer),
                "heads": heads,
                "sink_heads": int(sinks["head"].nunique()),
                "sinks": len(sinks),
                "max_ratio": float(top["ratio"].max()),
                "median_top_ratio": float(top["ratio"].median()),
                "sink_share": float(sinks.groupby("head")["received"].sum().reindex(range(heads), fill_value=0).mean()),
                "text_sinks": int((sinks["place"] == "text").sum()),
                "video_sinks": int((sinks["place"] == "video").sum()),
                "first_token_sinks": int((sinks["token_kind"] == "first").sum()),
                "sink_value_norm_ratio": float(sinks["value_norm_ratio"].median()) if len(sinks) else float("nan"),
                "sink_key_norm_ratio": float(sinks["key_norm_ratio"].median()) if len(sinks) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def where_table(keys: pd.DataFrame) -> pd.DataFrame:
    """Sinks counted by place, token kind, and (video) frame: where the sinks sit."""
    sinks = keys[keys["sink"]]
    if sinks.empty:
        return pd.DataFrame(columns=["place", "token_kind", "frame", "sinks", "heads", "layers", "example"])
    grouped = sinks.groupby(["place", "token_kind", "frame"])
    return (
        grouped.agg(
            sinks=("token_index", "size"),
            heads=("head", lambda s: len(set(zip(sinks.loc[s.index, "layer"], s, strict=True)))),
            layers=("layer", lambda s: ",".join(map(str, sorted(set(s))))),
            example=("token", lambda s: s.value_counts().index[0]),
        )
        .reset_index()
        .sort_values("sinks", ascending=False)
        .reset_index(drop=True)
    )
