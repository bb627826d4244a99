"""The self-contained HTML report of a sweep directory."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from . import figures
from .html import STYLE, _figure, _table


def write_sweep_report(path: Path, meta: dict[str, Any], table: pd.DataFrame, plan: dict[str, Any]) -> None:
    """report.html of a sweep: settings, the figures, the sensitivity table, the plan and every cell."""
    from ..analyses.sweep import sensitivity_table

    settings = {
        "model": meta["model"],
        "family": meta["family"],
        "sweep": f"{meta['mode']} ({meta['scope']}, {meta['method']})",
        "levels": ", ".join(f"{v:g}" for v in meta["levels"]),
        "temperatures": ", ".join(f"{v:g}" for v in meta["temperatures"]),
        "steps edited": "all" if meta["steps"] is None else f"{meta['steps'][0]}:{meta['steps'][1]}",
        "branches edited": "all" if meta["branches"] is None else ", ".join(meta["branches"]),
        "prompts": "<br>".join(html.escape(p) for p in meta["prompts"]),
        "seeds": ", ".join(map(str, meta["seeds"])),
        "cells (reused from an earlier run)": f"{meta['cells']} ({meta['cells_reused']})",
    }
    rows = "".join(
        f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
        for k, v in settings.items()
    )
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>vditscope sweep</title>"
        f"<style>{STYLE}</style></head><body>",
        "<h1>vditscope sweep: sparsity and temperature</h1>",
        f"<h2>Settings</h2><table>{rows}</table>",
        *(f"<p class='note'>{html.escape(note)}</p>" for note in meta.get("notes", [])),
        "<h2>Quality against sparsity</h2>",
        "<p>Every cell is scored against the dense generation with the same prompt and seed: PSNR and SSIM of the "
        "decoded frames, MSE of the final latents. sparsity = share of all self-attention entries dropped in the "
        "generation; mass_dropped = mean attention mass dropped per edited query row.</p>",
        _figure(figures.sweep_quality(table, plan.get("target_psnr") if plan else None), "image/png", "quality"),
        _figure(figures.sweep_pareto(table), "image/png", "pareto"),
        _figure(figures.sweep_temperature(table), "image/png", "temperature"),
    ]
    sensitivity = sensitivity_table(table)
    if not sensitivity.empty:
        parts += [
            "<h2>Layer sensitivity</h2>",
            _figure(figures.sweep_sensitivity(table), "image/png", "sensitivity"),
            _table(sensitivity),
        ]
    if plan:
        parts += [
            "<h2>Sparsity plan</h2>",
            f"<p>{html.escape(plan['rule'])}. Apply it with <code>vditscope generate --plan plan.json</code> or "
            "<code>vditscope analyze --plan plan.json</code>. Each layer was tested alone: check the combined plan "
            "with a generation before relying on it.</p>",
            f"<pre>{html.escape(json.dumps(plan['layers'], indent=1))}</pre>",
        ]
    parts += ["<h2>Every cell</h2>", _table(table), "</body></html>"]
    path.write_text("\n".join(parts))
