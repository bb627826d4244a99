"""The self-contained HTML page of `vditscope compare`."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from .html import figure_html, page, table_html

if TYPE_CHECKING:
    from ..analyses.compare import Comparison


def write_compare_report(path: Path, comparison: Comparison, figure: bytes) -> None:
    """compare.html: the two runs, how they were matched, the per-layer table and the figure."""
    a, b = comparison.run_a, comparison.run_b
    rows = "".join(
        f"<tr><th style='text-align:left'>{label}</th><td style='text-align:left'>{html.escape(str(data.path))}</td>"
        f"<td style='text-align:left'>{html.escape(str(data.run.get('model', '')))} ({data.run.get('family', '')})"
        "</td></tr>"
        for label, data in (("A", a), ("B", b))
    )
    parts = [
        f"<table><tr><th>run</th><th>directory</th><th>model</th></tr>{rows}</table>",
        *(f"<p class='note'>{html.escape(note)}</p>" for note in comparison.notes),
        "<p>similarity = mean Pearson correlation between the maps of the same prompt, seed and step "
        f"({html.escape(comparison.table['map'].iloc[0].replace('_', ' '))}s; per head when shapes agree, "
        "else head means pooled to a common size); within_a = run A's own similarity across its prompts.</p>",
        table_html(comparison.table),
        figure_html(figure, "image/png", "comparison"),
    ]
    path.write_text(page("vditscope compare", "vditscope: attention maps of two runs", parts))
