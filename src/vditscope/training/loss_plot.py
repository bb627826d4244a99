"""A small PNG of a training loss curve (per-step loss and its running mean)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..store import write_atomic


def write_loss_plot(path: Path, losses: Sequence[float], title: str) -> None:
    """Save the loss curve to ``path`` (log scale when the loss spans more than a decade)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(losses, dtype=float)
    steps = np.arange(1, len(values) + 1)
    window = max(1, min(20, len(values) // 10))
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(steps, values, color="#9bb7d4" if window > 1 else "#1f4e79", linewidth=0.8, label="step")
    if window > 1:
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="#1f4e79", linewidth=1.6, label=f"mean of {window} steps")
    positive = values[values > 0]
    if len(positive) and positive.max() > 10 * positive.min():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        write_atomic(path, lambda target: fig.savefig(target, format="png"))
    finally:
        plt.close(fig)
