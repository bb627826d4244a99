"""The self-contained HTML report of a sweep directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from . import figures
from .figure_files import writes_figures
from .html import Markup, figure_html, format_html, key_value_table, page, table_html


@writes_figures
def write_sweep_report(path: Path, meta: dict[str, Any], table: pd.DataFrame, plan: dict[str, Any]) -> None:
    """report.html of a sweep: settings, the figures, the sensitivity table, the plan and every cell."""
    from ..analyses.findings import sweep_findings
    from ..analyses.sweep_tables import sensitivity_table, svg_head_choices
    from .findings_html import findings_section

    settings = {
        "model": meta["model"],
        "family": meta["family"],
        "sweep": f"{meta['mode']} ({meta['scope']}, {meta['method']})",
        **_level_setting(meta),
        "temperatures": ", ".join(f"{v:g}" for v in meta["temperatures"]),
        "steps edited": "all" if meta["steps"] is None else f"{meta['steps'][0]}:{meta['steps'][1]}",
        "branches edited": "all" if meta["branches"] is None else ", ".join(map(str, meta["branches"])),
        "prompts": Markup("<br>").join(meta["prompts"]),
        "seeds": ", ".join(map(str, meta["seeds"])),
        "cells (reused from an earlier run)": f"{meta['cells']} ({meta['cells_reused']})",
    }
    parts = [
        Markup("<h2>Settings</h2>"),
        key_value_table(settings),
        *(format_html("<p class='note'>{}</p>", note) for note in meta.get("notes", [])),
        *findings_section(sweep_findings(table, plan)),
        Markup(
            "<h2 id='quality'>Quality against sparsity</h2>"
            "<p>Every cell is scored against the dense generation with the same prompt and seed: PSNR and SSIM of "
            "the decoded frames, MSE of the final latents. sparsity = share of all self-attention entries dropped "
            "in the generation; mass_dropped = mean attention mass dropped per edited query row.</p>"
        ),
        figure_html(figures.sweep_quality(table, plan.get("target_psnr") if plan else None), "image/png", "quality"),
        figure_html(figures.sweep_pareto(table), "image/png", "pareto"),
        figure_html(figures.sweep_temperature(table), "image/png", "temperature"),
    ]
    choices = svg_head_choices(table)
    if not choices.empty:
        parts += [
            Markup(
                "<h2 id='svg-heads'>Per-head windows (svg)</h2><p>Sparse VideoGen's choice: each head of each edited "
                "call keeps the spatial window (its own frame) or the temporal one (its own position in every frame), "
                "whichever reproduces the dense output better on a sample of queries. Shown: the window a head used in "
                "most calls of a cell, and the share of cells (prompts and seeds) in which it was that one.</p>"
            ),
            table_html(choices),
        ]
    sensitivity = sensitivity_table(table)
    if not sensitivity.empty:
        parts += [
            Markup("<h2 id='sensitivity'>Layer sensitivity</h2>"),
            figure_html(figures.sweep_sensitivity(table), "image/png", "sensitivity"),
            table_html(sensitivity),
        ]
    if plan:
        parts += [
            Markup("<h2 id='plan'>Sparsity plan</h2>"),
            format_html(
                "<p>{}. Apply it with <code>vditscope generate --plan plan.json</code> or "
                "<code>vditscope analyze --plan plan.json</code>. Each layer was tested alone: check the combined "
                "plan with a generation before relying on it.</p>",
                plan["rule"],
            ),
            format_html("<pre>{}</pre>", json.dumps(plan["layers"], indent=1)),
        ]
    parts += [Markup("<h2 id='cells'>Every cell</h2>"), table_html(table)]
    path.write_text(page("vditscope sweep", "vditscope sweep: sparsity and temperature", parts))


def _level_setting(meta: dict[str, Any]) -> dict[str, str]:
    """The settings row of what was swept: the levels of a level method, or the mask of a structured one (whose
    levels are unused)."""
    from ..analyses.sweep_tables import LEVEL_METHODS

    if meta["method"] in LEVEL_METHODS:
        return {"levels": ", ".join(f"{v:g}" for v in meta["levels"])}
    windows = {"svg": "per head: spatial or temporal, chosen per call (Sparse VideoGen)"}
    return {"mask": f"{meta['method']} ({windows.get(meta['method'], 'its default window unless --window')})"}
