"""study.html of `vditscope retrain`: sinks, sparsity sensitivity and quality, before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..media import gif_bytes
from .figure_files import writes_figures
from .figures import capped_psnr, figure_png, plt
from .html import Markup, figure_html, format_html, page, table_html

# one colour per model in every figure of the study (and a line style where lines of both share an axis)
MODEL_STYLES = {"original": ("--", "#7f7f7f"), "retrained": ("-", "#d62728")}
SINK_COLUMNS = ["model", "layer", "retrained", "sink_heads", "heads", "max_ratio", "median_top_ratio", "sink_share"]


def sinks_before_after(sinks: pd.DataFrame, layers: list[int]) -> bytes | None:
    """Per layer: the strongest key's ratio to the median and the heads with a sink, both models."""
    if sinks.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = list(dict.fromkeys(sinks["model"]))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        part = sinks[sinks["model"] == name].sort_values("layer")
        x = part["layer"].to_numpy() + (i - (len(names) - 1) / 2) * width
        color = MODEL_STYLES.get(name, ("-", None))[1]
        axes[0].bar(x, part["max_ratio"], width, label=name, color=color)
        axes[1].bar(x, part["sink_heads"] / part["heads"], width, label=name, color=color)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("strongest key / median key")
    axes[1].set_ylabel("heads with a sink")
    for ax in axes:
        ax.set_xlabel("layer (retrained: " + ",".join(map(str, layers)) + ")")
        for layer in layers:
            ax.axvspan(layer - 0.5, layer + 0.5, color="#ffe9a8", zorder=0)
        ax.legend(fontsize=7)
    fig.suptitle("Sinks before and after retraining", fontsize=9)
    return figure_png(fig)


def sparsity_before_after(sparsity: pd.DataFrame) -> bytes | None:
    """PSNR against each model's own dense video when one retrained layer is sparsified, per level."""
    if sparsity.empty:
        return None
    level = sparsity.columns[2]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    markers = "osD^v<>px*"
    for i, (layer, group) in enumerate(sparsity.groupby("layer")):
        for name, (style, color) in MODEL_STYLES.items():
            part = group[group["model"] == name].sort_values(level)
            if part.empty:
                continue
            ax.plot(part[level], capped_psnr(part["psnr"]), style, marker=markers[i % len(markers)], color=color,
                    label=f"layer {layer}, {name}")  # fmt: skip
    ax.set_xlabel(f"sparsity level ({level})")
    ax.set_ylabel("PSNR vs own dense (dB, capped at 60)")
    ax.legend(fontsize=7)
    ax.set_title("Sparsity sensitivity of the retrained layers", fontsize=9)
    return figure_png(fig)


@writes_figures
def write_study_report(
    path: Path,
    models: dict[str, str],
    layers: list[int],
    tables: dict[str, pd.DataFrame],
    videos: dict[str, Any],
    loss_png: Path,
) -> None:
    """One self-contained page: loss curve, sinks, sparsity sensitivity, quality and a side-by-side video."""
    parts = [
        format_html(
            "<p>Original: {}<br>Retrained: {} (layers {} re-initialized and trained, the rest frozen).</p>",
            models["original"],
            models["retrained"],
            ", ".join(map(str, layers)),
        ),
    ]
    if loss_png.is_file():
        parts.append(figure_html(loss_png.read_bytes(), "image/png", "training loss", "Training loss"))
    parts += [
        Markup("<h2>Sinks</h2>"),
        figure_html(sinks_before_after(tables["sinks"], layers), "image/png", "sinks"),
        table_html(tables["sinks"][SINK_COLUMNS]),
        Markup(
            "<h2>Sparsity sensitivity</h2>"
            "<p>Each retrained layer sparsified alone (bottom-k), the video compared with the same model's dense "
            "video: a layer is more sparsifiable when its PSNR stays higher at a given level.</p>"
        ),
        figure_html(sparsity_before_after(tables["sparsity"]), "image/png", "sparsity"),
        table_html(tables["sparsity"]),
        Markup("<h2>Quality against the original</h2>"),
        table_html(tables["quality"]),
    ]
    if videos:
        strip = np.concatenate([videos["original"], videos["retrained"]], axis=2)
        caption = f"{videos['prompt']}: original (left), retrained (right)"
        parts.append(figure_html(gif_bytes(strip), "image/gif", "videos", caption))
    path.write_text(page("vditscope retrain study", "Retraining: before and after", parts))
