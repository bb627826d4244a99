"""The self-contained HTML page of `vditscope compare`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .figure_files import writes_figures
from .html import Markup, figure_html, format_html, page, table_html

if TYPE_CHECKING:
    from ..analyses.results import Comparison


@writes_figures
def write_compare_report(path: Path, comparison: Comparison, figure: bytes) -> None:
    """compare.html: the two runs, how they were matched, the per-layer table and the figure. Both run
    directories may come from someone else: their paths and run.json fields are shown as text."""
    a, b = comparison.run_a, comparison.run_b
    rows = Markup("").join(
        format_html(
            "<tr><th style='text-align:left'>{}</th><td style='text-align:left'>{}</td>"
            "<td style='text-align:left'>{} ({})</td></tr>",
            label,
            data.path,
            data.run.get("model", ""),
            data.run.get("family", ""),
        )
        for label, data in (("A", a), ("B", b))
    )
    parts = [
        format_html("<table><tr><th>run</th><th>directory</th><th>model</th></tr>{}</table>", rows),
        *(format_html("<p class='note'>{}</p>", note) for note in comparison.notes),
        format_html(
            "<p>similarity = mean Pearson correlation between the maps of the same prompt, seed and step "
            "({}s; per head when shapes agree, else head means pooled to a common size); within_a = run A's own "
            "similarity across its prompts.</p>",
            str(comparison.table["map"].iloc[0]).replace("_", " "),
        ),
        table_html(comparison.table),
        figure_html(figure, "image/png", "comparison"),
    ]
    path.write_text(page("vditscope compare", "vditscope: attention maps of two runs", parts))
