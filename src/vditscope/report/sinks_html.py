"""report.html of `vditscope sinks`: a video model's sinks, and a language model's beside them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..analyses.findings import sink_findings
from . import sink_figures
from .figure_files import writes_figures
from .findings_html import findings_section
from .html import Markup, figure_html, format_html, page, table_html

if TYPE_CHECKING:
    from ..analyses.results import SinkResult

TOP_ROWS = 12


def _name(result: SinkResult) -> str:
    return f"{Path(result.model).name} ({result.family}, {result.kind})"


def _top_sinks(keys: pd.DataFrame) -> pd.DataFrame:
    columns = ["layer", "head", "token_index", "token", "place", "token_kind", "ratio", "received",
               "key_norm_ratio", "value_norm_ratio"]  # fmt: skip
    return keys[keys["sink"]].sort_values("ratio", ascending=False).head(TOP_ROWS)[columns]


def _section(result: SinkResult, threshold: float, anchor: str) -> list[Markup]:
    name = _name(result)
    summary = result.layers
    total_heads = int(summary["heads"].sum()) if len(summary) else 0
    sink_heads = int(summary["sink_heads"].sum()) if len(summary) else 0
    none = Markup("<p>No sinks.</p>")
    parts = [
        format_html("<h2 id='{}'>{}</h2>", anchor, name),
        format_html(
            "<p>{} of {} heads have at least one sink (a key receiving >= {:g}x the median key's attention, "
            "the median floored at 1/N, {}).</p>",
            sink_heads,
            total_heads,
            threshold,
            "averaged over the observed steps and prompts"
            if result.kind == "video"
            else "in one forward pass over the first text; the other texts are compared with it",
        ),
        figure_html(sink_figures.ratio_heatmap(result.keys, name, threshold), "image/png", f"ratios {name}"),
        format_html("<h3 id='{}-layers'>Per layer</h3>", anchor),
        table_html(summary),
        format_html("<h3 id='{}-where'>Where the sinks sit</h3>", anchor),
        table_html(result.where) if not result.where.empty else none,
        Markup("<h3>Strongest sinks</h3>"),
        table_html(_top_sinks(result.keys)) if result.keys["sink"].any() else none,
    ]
    if not result.ablation.empty:
        metric, label = (
            ("psnr", "PSNR against unchanged (dB)") if result.kind == "video" else ("loss", "next-token loss")
        )
        if metric not in result.ablation:
            metric, label = "output_change", "relative output change"
        parts += [
            format_html(
                "<h3 id='{}-ablation'>Ablation: sinks against as many random keys</h3>"
                "<p>mask: the keys are hidden from every query (scores); zero-values: the attention stays, their "
                "values are zeroed.</p>",
                anchor,
            ),
            figure_html(sink_figures.ablation_bars(result.ablation, metric, label), "image/png", f"ablation {name}"),
            table_html(result.ablation.drop(columns=["prompt"], errors="ignore")),
        ]
    return parts


@writes_figures
def write_sinks_report(
    path: Path, run: dict[str, Any], primary: SinkResult, lm: SinkResult | None, calls: pd.DataFrame | None = None
) -> None:
    """One self-contained page: the comparison figures first, then one section per model (with the
    per-step detection of a video model from its ``calls`` table)."""
    results = [primary] + ([lm] if lm is not None else [])
    threshold = float(run["threshold"])
    intro = format_html(
        "<p>Model {} ({}). A sink is a key whose received attention (mean over queries) is at least {:g}x the "
        "median key's of the same layer and head (the median floored at the uniform share 1/N). Key and value "
        "norms are relative to the median key of that "
        "head.</p>",
        primary.model,
        primary.family,
        threshold,
    )
    findings = [f for i, r in enumerate(results) for f in sink_findings(r, threshold, f"model-{i}")]
    parts = [
        intro,
        *findings_section(findings),
        figure_html(sink_figures.depth_profile({_name(r): r.layers for r in results}), "image/png", "depth profile"),
        figure_html(sink_figures.norm_scatter({_name(r): r.keys for r in results}), "image/png", "value norms"),
        Markup(
            "<p id='consistency'>Consistency: mean Jaccard overlap of each head's sink set between denoising steps "
            "of a generation and between prompts at the same step (a video model), or between texts (a text model, "
            "which has no steps: give <code>--text</code> (<code>--lm-text</code>) more than once to compare); sets "
            "are capped at the captured top keys per head. A model with nothing to compare has no panel.</p>"
        ),
        figure_html(
            sink_figures.consistency_bars({_name(r): r.consistency for r in results}), "image/png", "consistency"
        ),
    ]
    for i, result in enumerate(results):
        parts += _section(result, threshold, f"model-{i}")
        if result is primary and calls is not None and not calls.empty:
            figure = sink_figures.step_heatmap(calls, threshold)
            parts += [Markup("<h3>Per denoising step</h3>"), figure_html(figure, "image/png", "sinks per step")]
    path.write_text(page("vditscope sinks", "Attention sinks", parts))
