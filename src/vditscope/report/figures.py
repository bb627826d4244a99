"""Matplotlib figures of a run, returned as PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def entropy_heatmap(stats: pd.DataFrame) -> bytes | None:
    """Mean self-attention entropy per layer (rows) and denoising step (columns), cond branch."""
    data = stats[(stats["kind"] == "self") & (stats["branch"] == "cond")]
    if data.empty:
        return None
    grid = data.pivot_table(index="layer", columns="step", values="entropy", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.35 * grid.shape[1]), min(10, 1.5 + 0.3 * grid.shape[0])))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index], fontsize=7)
    fig.colorbar(image, ax=ax, label="entropy (nats)")
    ax.set_title("Self-attention entropy (mean over heads and prompts)")
    return _png(fig)


def frame_maps(maps: dict[str, torch.Tensor], prefix: str) -> bytes | None:
    """Small multiples: the frame x frame map of every self-attention layer, mean over heads."""
    names = sorted(
        (n for n in maps if n.startswith(f"frame_map.{prefix}.self.layer")),
        key=lambda n: int(n.rsplit("layer", 1)[1]),
    )
    if not names:
        return None
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        ax.imshow(maps[name].mean(0).numpy(), cmap="magma")
        ax.set_title(f"layer {name.rsplit('layer', 1)[1]}", fontsize=8)
    fig.suptitle("Mass from query frame (row) to key frame (column)", fontsize=9)
    return _png(fig)


def locality_curves(
    maps: dict[str, torch.Tensor], key: str, baseline: torch.Tensor, xlabel: str, title: str
) -> bytes | None:
    """One curve per self-attention layer: mass by (frame or spatial) distance divided by what
    uniform attention would put there (1 = no locality; above 1 = attention stays close).
    The axis turns logarithmic when the ratios span more than a factor of 4."""
    per_layer: dict[int, list[np.ndarray]] = {}
    for name, tensor in maps.items():
        if name.startswith(f"{key}.") and ".self.layer" in name:
            per_layer.setdefault(int(name.rsplit("layer", 1)[1]), []).append(tensor.mean(0).numpy())
    if not per_layer:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    cmap = plt.get_cmap("viridis", max(len(per_layer), 2))
    base = baseline.numpy()
    curves = {
        layer: np.mean(values, axis=0)[: len(base)] / np.maximum(base, 1e-12) for layer, values in per_layer.items()
    }
    for i, layer in enumerate(sorted(curves)):
        curve = curves[layer]
        ax.plot(range(len(curve)), curve, marker="o", ms=3, color=cmap(i), label=f"layer {layer}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mass / uniform share")
    values = np.concatenate(list(curves.values()))
    positive = values[values > 0]
    if positive.size and positive.max() / positive.min() > 4:
        ax.set_yscale("log")
    ax.set_title(title)
    if len(per_layer) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _png(fig)
