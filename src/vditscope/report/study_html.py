"""The HTML pages of the editing studies: edit-sweep and the text-token ablation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..analyses.findings import EDIT_SWEEP_ANCHOR, TEXT_ABLATION_ANCHOR, edit_sweep_findings, text_ablation_findings
from ..media import gif_bytes
from .figure_files import writes_figures
from .findings_html import findings_section
from .html import figure_html, format_html, page, table_html


@writes_figures
def write_edit_sweep_report(
    path: Path,
    source_prompt: str,
    target_prompt: str,
    mode: str,
    window: int,
    steps: tuple[int, int] | None,
    table: pd.DataFrame,
    figure: bytes,
) -> None:
    """report.html of an edit-sweep: the prompts, the settings, the per-window figure and table."""
    steps_text = "all" if steps is None else f"{steps[0]}:{steps[1]}"
    intro = format_html(
        "<p>Source: {}<br>Target: {}<br>Transfer mode {}, {} layer(s) at a time, steps {}. The row 'none' is the "
        "plain target: a window scores above it when transferring it brings the source's layout back.</p>",
        source_prompt,
        target_prompt,
        mode,
        window,
        steps_text,
    )
    scores = format_html("<div id='{}'>{}{}</div>", EDIT_SWEEP_ANCHOR, figure_html(figure, "image/png", "edit sweep"),
                         table_html(table))  # fmt: skip
    parts = [intro, *findings_section(edit_sweep_findings(table)), scores]
    path.write_text(page("vditscope edit-sweep", "Which layers carry layout", parts))


@writes_figures
def write_text_ablation_report(
    path: Path,
    model: str,
    family: str,
    seed: int,
    prompts: Sequence[str],
    methods: Sequence[str],
    table: pd.DataFrame,
    videos: dict[str, np.ndarray],
) -> None:
    """report.html of a text ablation: the scores, and per prompt the full and ablated videos side by side."""
    parts = [
        format_html(
            "<p>Model {} ({}), seed {}. mask: all text keys but the first are removed from every attention call; "
            "truncate: the text encoder's output keeps only its first token. Scores compare each ablated video "
            "with the full-prompt one.</p>",
            model,
            family,
            seed,
        ),
        *findings_section(text_ablation_findings(table)),
        format_html("<div id='{}'>{}</div>", TEXT_ABLATION_ANCHOR, table_html(table)),
    ]
    for p, prompt in enumerate(prompts):
        strip = np.concatenate([videos[f"p{p}.full"], *(videos[f"p{p}.{m}"] for m in methods)], axis=2)
        caption = f"{prompt}: full, " + ", ".join(methods)
        parts.append(figure_html(gif_bytes(strip), "image/gif", f"p{p}", caption))
    path.write_text(page("vditscope text ablation", "Text-token dominance: the first token alone", parts))
