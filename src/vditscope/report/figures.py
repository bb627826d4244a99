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
from matplotlib.text import Text

from ..analyses.sweep_tables import LEVEL_METHODS, level_column
from .figure_files import Figure, collecting

# Labels carry prompts, token strings, model and directory names: draw every text as it is, never as
# mathtext or TeX, where a pair of dollar signs would be parsed (and a bad formula raises).
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def figure_png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes, every text drawn literally (see LITERAL_TEXT); closes the figure. Inside
    ``figure_files`` the bytes are a ``Figure`` that also holds the figure as SVG."""
    try:
        for text in fig.findobj(Text):  # the texts made so far took their settings from rcParams then
            text.set_parse_math(False)
            text.set_usetex(False)
        buffer = io.BytesIO()
        with matplotlib.rc_context(LITERAL_TEXT):  # and tick labels made while drawing take them now
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            if not collecting():
                return buffer.getvalue()
            vector = io.StringIO()
            fig.savefig(vector, format="svg", bbox_inches="tight", metadata={"Date": None})
        return Figure(buffer.getvalue(), vector.getvalue())
    finally:
        plt.close(fig)


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
    return figure_png(fig)


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
    return figure_png(fig)


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
    return figure_png(fig)


def _small_multiples(count: int, size: float = 2.1) -> tuple[plt.Figure, np.ndarray]:
    cols = min(6, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.1) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def token_maps(maps: dict[str, torch.Tensor], names: list[str], title: str) -> bytes | None:
    """Small multiples: the tile-pooled token map of each given layer map, mean over heads, log scale."""
    if not names:
        return None
    fig, axes = _small_multiples(len(names), 2.3)
    for ax, name in zip(axes.flat, names, strict=False):
        image = maps[name].float().mean(0).clamp(min=1e-8).log10().numpy()
        ax.imshow(image, cmap="magma", vmin=float(np.quantile(image, 0.02)), vmax=float(image.max()))
        ax.set_title(f"layer {name.rsplit('layer', 1)[1]}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return figure_png(fig)


def similarity_by_layer(table: pd.DataFrame) -> bytes | None:
    """Mean off-diagonal Pearson correlation of the pooled maps per layer, one line per axis."""
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for axis, group in table.groupby("axis"):
        group = group.sort_values("layer")
        ax.plot(group["layer"], group["mean_similarity"], marker="o", ms=4, label=f"across {axis}")
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("mean Pearson correlation")
    ax.set_ylim(min(0.0, float(table["mean_similarity"].min()) - 0.05), 1.02)
    ax.set_title("How similar the attention maps are")
    ax.legend(fontsize=8)
    return figure_png(fig)


def similarity_matrices(matrices: dict[int, np.ndarray], labels: list[str], title: str) -> bytes | None:
    """Small multiples: the label x label correlation matrix of each layer (shared colour scale)."""
    if not matrices:
        return None
    layers = sorted(matrices)
    low = min(0.0, float(np.nanmin([np.nanmin(m) for m in matrices.values()])))
    fig, axes = _small_multiples(len(layers), 2.2)
    image = None
    for ax, layer in zip(axes.flat, layers, strict=False):
        ax.axis("on")
        image = ax.imshow(matrices[layer], cmap="viridis", vmin=low, vmax=1.0)
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="Pearson r")
    fig.suptitle(title, fontsize=9)
    return figure_png(fig)


HEAD_COLORS = {"spatial": "#4c78a8", "temporal": "#f58518", "mixed": "#bab0ac", "sink": "#e45756", "unknown": "#ffffff"}


def head_classes(heads: pd.DataFrame) -> bytes | None:
    """Layer x head grid coloured by head class, with the same-frame mass written in each cell."""
    if heads.empty:
        return None
    layers = sorted(heads["layer"].unique())
    num_heads = int(heads["head"].max()) + 1
    fig, ax = plt.subplots(figsize=(min(14, 1.5 + 0.55 * num_heads), min(12, 1.0 + 0.4 * len(layers))))
    for layer, head, same_frame, label in zip(
        heads["layer"], heads["head"], heads["same_frame_mass"], heads["class"], strict=True
    ):
        y = layers.index(layer)
        ax.add_patch(plt.Rectangle((head, y), 1, 1, color=HEAD_COLORS.get(label, "#ffffff"), ec="white"))
        if not np.isnan(same_frame):
            ax.text(head + 0.5, y + 0.5, f"{same_frame:.2f}", ha="center", va="center", fontsize=6)
    ax.set_xlim(0, num_heads)
    ax.set_ylim(len(layers), 0)
    ax.set_xticks(np.arange(num_heads) + 0.5, [str(h) for h in range(num_heads)], fontsize=7)
    ax.set_yticks(np.arange(len(layers)) + 0.5, [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for name, c in HEAD_COLORS.items() if name != "unknown"]
    ax.legend(handles, [n for n in HEAD_COLORS if n != "unknown"], fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("Head classes (number: same-frame mass)", fontsize=9)
    return figure_png(fig)


def text_attention(text: pd.DataFrame, kind: str) -> bytes | None:
    """Small multiples per layer: mass video queries give each text token (bars), first token in red."""
    data = text[text["kind"] == kind]
    if data.empty:
        return None
    layers = sorted(data["layer"].unique())
    fig, axes = _small_multiples(len(layers), 2.6)
    for ax, layer in zip(axes.flat, layers, strict=False):
        rows = data[data["layer"] == layer].sort_values("token_index")
        ax.axis("on")
        colors = ["#e45756" if i == 0 else "#4c78a8" for i in rows["token_index"]]
        ax.bar(rows["token_index"], rows["mass"], color=colors)
        labels = [t if t else str(i) for i, t in zip(rows["token_index"], rows["token"], strict=True)]
        ax.set_xticks(rows["token_index"], labels, fontsize=5, rotation=90)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"layer {layer}", fontsize=8)
    what = "joint self-attention" if kind == "self" else "cross-attention"
    fig.suptitle(f"Mass a video query gives each text token ({what})", fontsize=9)
    return figure_png(fig)


def comparison_bars(table: pd.DataFrame, name_a: str, name_b: str) -> bytes:
    """Per matched layer: similarity of run A's and run B's maps (bars), and run A's own similarity
    across prompts (dots) as the scale a model-to-model value can be read against."""
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(table) + 2), 3.4))
    x = np.arange(len(table))
    ax.bar(x, table["similarity"], color="#4c78a8", label=f"{name_a} vs {name_b}")
    if table["within_a"].notna().any():
        ax.plot(x, table["within_a"], "o", color="#e45756", ms=5, label=f"{name_a}: across its prompts")
    labels = [str(a) if a == b else f"{a}/{b}" for a, b in zip(table["layer_a"], table["layer_b"], strict=True)]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_xlabel("layer" if all(table["layer_a"] == table["layer_b"]) else "layer (A/B)")
    ax.set_ylabel("mean Pearson correlation")
    low = float(np.nanmin(np.r_[table["similarity"].to_numpy(), 0.0]))
    ax.set_ylim(min(0.0, low - 0.05), 1.02)
    ax.set_title("Attention map similarity between two runs")
    ax.legend(fontsize=7)
    return figure_png(fig)


def capped_psnr(values: pd.Series, cap: float = 60.0) -> np.ndarray:
    """PSNR with identical outputs (inf) drawn at a cap so they stay on the axis."""
    return np.minimum(values.to_numpy(dtype=float), cap)


def sweep_quality(table: pd.DataFrame, target: float | None = None) -> bytes | None:
    """PSNR against the sparsity level: one line per layer set (mean over prompts and seeds)."""
    if table.empty or table["method"].iloc[0] not in LEVEL_METHODS:
        return None
    level = level_column(table)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = list(table.groupby(["layers", "temperature"]))
    cmap = plt.get_cmap("viridis", max(len(groups), 2))
    for i, ((layers, tau), group) in enumerate(groups):
        means = group.groupby(level)["psnr"].mean()
        label = f"layers {layers}" + (f", tau {tau:g}" if tau != 1 else "")
        ax.plot(means.index, capped_psnr(means), marker="o", ms=3, color=cmap(i), label=label)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=0.8)
    method = str(table["method"].iloc[0])
    ax.set_xlabel("bottom-k share of keys dropped (k)" if level == "k" else f"{method} mass kept (p)")
    ax.set_ylabel("PSNR vs dense (dB, 60 = identical)")
    ax.set_title("Quality against sparsity")
    if len(groups) <= 14:
        ax.legend(fontsize=6, ncol=2)
    return figure_png(fig)


def sweep_sensitivity(table: pd.DataFrame) -> bytes | None:
    """Bars per layer: PSNR when only that layer is sparsified, one bar per level."""
    rows = table[table["scope"] == "per-layer"]
    if rows.empty:
        return None
    level = level_column(rows)
    pivot = rows.pivot_table(index="layer", columns=level, values="psnr", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(pivot) * max(1, pivot.shape[1] / 2) + 2), 3.4))
    width = 0.8 / pivot.shape[1]
    for j, column in enumerate(pivot.columns):
        ax.bar(
            np.arange(len(pivot)) + j * width,
            capped_psnr(pivot[column]),
            width,
            label=f"{level} = {column:g}" if isinstance(column, float) else str(column),
        )
    ax.set_xticks(np.arange(len(pivot)) + 0.4 - width / 2, [str(i) for i in pivot.index], fontsize=7)
    ax.set_xlabel("layer sparsified alone")
    ax.set_ylabel("PSNR vs dense (dB)")
    ax.set_title("Layer sensitivity (lower = the layer matters more)")
    ax.legend(fontsize=7)
    return figure_png(fig)


def pareto_front(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """The points no other point beats in both sparsity ``x`` and quality ``y``, from the sparsest. Among
    equal sparsities the best quality is visited first, so a worse point there never joins the front."""
    front_x: list[float] = []
    front_y: list[float] = []
    best = -np.inf
    for i in np.lexsort((-y, -x)):  # x descending, then y descending
        if y[i] > best:
            best = y[i]
            front_x.append(float(x[i]))
            front_y.append(float(y[i]))
    return front_x, front_y


def sweep_pareto(table: pd.DataFrame) -> bytes | None:
    """Every cell's PSNR against the share of attention entries dropped, with the Pareto front."""
    if table.empty:
        return None
    cells = table.groupby(["layers", "mask", "k", "p", "temperature"], dropna=False)[["sparsity", "psnr"]].mean()
    x, y = cells["sparsity"].to_numpy(), capped_psnr(cells["psnr"])
    front_x, front_y = pareto_front(x, y)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter(x, y, s=14, color="#4c78a8", alpha=0.7, label="cells")
    ax.plot(front_x, front_y, color="#e45756", marker="o", ms=3, label="Pareto front")
    ax.set_xlabel("share of all self-attention entries dropped")
    ax.set_ylabel("PSNR vs dense (dB, 60 = identical)")
    ax.set_title("Quality-sparsity trade-off")
    ax.legend(fontsize=7)
    return figure_png(fig)


def sweep_temperature(table: pd.DataFrame) -> bytes | None:
    """PSNR against temperature, one line per sparsity level (temperature sweeps)."""
    if table.empty or table["temperature"].nunique() < 2:
        return None
    lines = temperature_lines(table)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    cmap = plt.get_cmap("viridis", max(len(lines), 2))
    for i, (label, means) in enumerate(lines.items()):
        ax.plot(means.index, capped_psnr(means), marker="o", ms=3, color=cmap(i), label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature tau (logits / tau)")
    ax.set_ylabel("PSNR vs dense (dB, 60 = identical)")
    ax.set_title("Temperature and sparsity")
    if len(lines) <= 14:
        ax.legend(fontsize=6, ncol=2)
    return figure_png(fig)


def temperature_lines(table: pd.DataFrame) -> dict[str, pd.Series]:
    """PSNR by temperature (mean over prompts and seeds), one line per layer set and level: cells of different
    scopes (all layers, one layer) are never averaged together. Labels name both."""
    level = level_column(table)
    lines = {}
    for (layers, value), group in table.groupby(["layers", level], sort=True):
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        lines[f"layers {layers}, {level} = {shown}"] = group.groupby("temperature")["psnr"].mean()
    return lines


def edit_sweep_bars(table: pd.DataFrame) -> bytes:
    """SSIM to the source per transferred layer window, against the plain target (dashed line)."""
    plain = table[table["layers"] == "none"]
    rows = table[table["layers"] != "none"]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(rows) + 2), 3.4))
    ax.bar(np.arange(len(rows)), rows["ssim_to_source"], color="#4c78a8", label="target with transfer")
    if not plain.empty:
        ax.axhline(float(plain["ssim_to_source"].iloc[0]), color="#e45756", ls="--", label="plain target")
    ax.set_xticks(np.arange(len(rows)), list(rows["layers"]), fontsize=7, rotation=90 if len(rows) > 12 else 0)
    ax.set_xlabel("transferred layer(s)")
    ax.set_ylabel("SSIM to the source video")
    ax.set_title("How much of the source's layout each layer window carries")
    ax.legend(fontsize=7)
    return figure_png(fig)
