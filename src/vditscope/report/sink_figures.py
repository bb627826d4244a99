"""Figures of a sink study (PNG bytes): sink ratios per layer and head, sinks over relative depth for
a video model beside a language model, key/value norms of sinks, consistency, ablation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import capped_psnr, figure_png, plt


def ratio_heatmap(keys: pd.DataFrame, title: str, threshold: float) -> bytes | None:
    """log10 of the top key's ratio to the median key, per layer (rows) and head (columns)."""
    top = keys[keys["rank"] == 0]
    if top.empty:
        return None
    grid = top.pivot_table(index="layer", columns="head", values="ratio", aggfunc="max")
    values = np.log10(np.clip(grid.to_numpy(dtype=float), 1.0, None))
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.3 * grid.shape[1]), min(10, 1.6 + 0.3 * grid.shape[0])))
    image = ax.imshow(values, aspect="auto", cmap="magma", vmin=0, vmax=max(3.0, float(np.nanmax(values))))
    for (row, col), value in np.ndenumerate(values):
        if value >= np.log10(threshold):
            ax.text(col, row, "•", ha="center", va="center", color="#2ca02c", fontsize=9)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index], fontsize=7)
    fig.colorbar(image, ax=ax, label="log10(top key / median key)")
    ax.set_title(f"{title}: strongest key per head (dot: sink, >= {threshold:g}x)", fontsize=9)
    return figure_png(fig)


def depth_profile(summaries: dict[str, pd.DataFrame]) -> bytes | None:
    """Share of heads with a sink and the attention share sinks take, against relative depth, one
    line per model: where in the stack sinks appear."""
    if not summaries or all(s.empty for s in summaries.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, summary in summaries.items():
        if summary.empty:
            continue
        depth = summary["layer"] / max(int(summary["layer"].max()), 1)
        axes[0].plot(depth, summary["sink_heads"] / summary["heads"], "o-", label=name)
        axes[1].plot(depth, summary["sink_share"], "o-", label=name)
    axes[0].set_ylabel("heads with a sink")
    axes[1].set_ylabel("attention mass on sinks (per query)")
    for ax in axes:
        ax.set_xlabel("relative depth (0 = first layer, 1 = last)")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
    fig.suptitle("Where in the stack the sinks are", fontsize=9)
    return figure_png(fig)


def norm_scatter(tables: dict[str, pd.DataFrame]) -> bytes | None:
    """Value-norm ratio (to the median key) against received ratio, sinks in colour: language-model
    sinks are known to have small values."""
    tables = {name: table for name, table in tables.items() if not table.empty}
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(4.3 * len(tables), 3.4), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        other = table[~table["sink"]]
        sinks = table[table["sink"]]
        ax.scatter(other["ratio"], other["value_norm_ratio"], s=5, color="#bbbbbb", label="other keys")
        ax.scatter(sinks["ratio"], sinks["value_norm_ratio"], s=12, color="#d62728", label="sinks")
        ax.set_xscale("log")
        ax.axhline(1.0, color="#555", lw=0.6, ls=":")
        ax.set_xlabel("received / median key")
        ax.set_ylabel("value norm / median value norm")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Value norms of the sinks", fontsize=9)
    return figure_png(fig)


def consistency_bars(overlaps: dict[str, pd.DataFrame]) -> bytes | None:
    """Per layer: mean Jaccard overlap of sink sets across steps and across prompts/texts. A model without
    anything to compare (one text: no steps, no second text) gets no panel, and an overlap that is undefined
    for every layer (a text model's steps) no bars: 'undefined' is not drawn as 0."""
    series = {"steps_overlap": ("across steps", "#4c78a8"), "prompts_overlap": ("across prompts/texts", "#f58518")}
    overlaps = {
        name: table
        for name, table in overlaps.items()
        if not table.empty and any(table[column].notna().any() for column in series)
    }
    if not overlaps:
        return None
    fig, axes = plt.subplots(1, len(overlaps), figsize=(4.5 * len(overlaps), 3.0), squeeze=False)
    for ax, (name, table) in zip(axes[0], overlaps.items(), strict=True):
        x = np.arange(len(table))
        drawn = [column for column in series if table[column].notna().any()]
        for i, column in enumerate(drawn):
            offset = (i - (len(drawn) - 1) / 2) * 0.4
            label, color = series[column]
            ax.bar(x + offset, table[column].fillna(0), 0.4, label=label, color=color)
        ax.set_xticks(x, [str(layer) for layer in table["layer"]], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel("sink-set overlap (Jaccard)")
        ax.set_ylim(0, 1.05)
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("How consistent the sinks are", fontsize=9)
    return figure_png(fig)


def ablation_bars(table: pd.DataFrame, metric: str, label: str) -> bytes | None:
    """One bar per path (mask, zero-values) and key set (sinks, random): the metric after ablation."""
    if table.empty or metric not in table:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    paths = list(dict.fromkeys(table["path"]))
    x = np.arange(len(paths))
    for offset, (selection, color) in zip((-0.2, 0.2), (("sinks", "#d62728"), ("random", "#7f7f7f")), strict=True):
        values = [table[(table["path"] == p) & (table["keys"] == selection)][metric].mean() for p in paths]
        values = capped_psnr(pd.Series(values)) if metric == "psnr" else np.asarray(values, dtype=float)
        ax.bar(x + offset, values, 0.4, label=f"{selection} removed", color=color)
    ax.set_xticks(x, paths)
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    ax.set_title("Removing the sinks against removing as many random keys", fontsize=9)
    return figure_png(fig)


def step_heatmap(calls: pd.DataFrame, threshold: float) -> bytes | None:
    """Share of heads with a sink per layer (rows) and denoising step (columns), cond branch: when
    during the schedule the sinks appear."""
    cond = calls[(calls["branch"] == "cond") & (calls["rank"] == 0)]
    if cond.empty:
        return None
    cond = cond.assign(has_sink=cond["ratio"] >= threshold)
    grid = cond.pivot_table(index="layer", columns="step", values="has_sink", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.35 * grid.shape[1]), min(10, 1.6 + 0.3 * grid.shape[0])))
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="Reds", vmin=0, vmax=1)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index], fontsize=7)
    fig.colorbar(image, ax=ax, label="heads with a sink (share)")
    ax.set_title("Sinks per layer and step (mean over prompts)", fontsize=9)
    return figure_png(fig)
