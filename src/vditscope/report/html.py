"""A self-contained HTML report: tables and inline images (PNG figures, GIF videos), readable offline.

Escaping is the default: reports show prompts, token strings, model paths, notes and run.json fields
of runs received from someone else, so every value given to ``page``, ``figure_html``,
``key_value_table`` or as an argument of ``format_html`` is text and is escaped. Only ``Markup`` (markupsafe; the
report code's own literal HTML, and what these helpers return) is inserted as it is.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup, escape

from ..analyses.structure import HEAD_RULE, SINK_RATIO, Structure, first_token_share
from ..media import gif_bytes
from ..stats.streaming import uniform_locality
from ..store.map_names import MapName, parse_map_name
from . import figures
from .explorer import explorer_section
from .figure_files import add_figure, writes_figures
from .findings_html import analyze_findings_section

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}.note{background:#fff6d6;padding:.6em 1em;border-left:4px solid #e0b000}
figure{display:inline-block;margin:.5em}figcaption{font-size:.8em;color:#555;text-align:center}
img{max-width:100%}.table-wrap{overflow-x:auto;max-width:100%}
"""


def format_html(template: str, /, *args: object, **kwargs: object) -> Markup:
    """``template.format(...)`` for HTML: the template is trusted markup (a literal of the report
    code, never built from data); every argument is formatted with its spec, then escaped unless it
    is Markup (markupsafe's ``Markup.format``)."""
    return Markup(template).format(*args, **kwargs)


def _img(data: bytes, mime: str, alt: str) -> Markup:
    encoded = base64.b64encode(data).decode()
    return format_html('<img class="figure" alt="{}" src="data:{};base64,{}">', alt, mime, encoded)


def layer_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """Per layer and site kind: mean entropy, same-frame mass, text mass, top-10% mass, largest sink ratio."""
    grouped = stats.groupby(["layer", "kind"])
    summary = grouped.agg(
        entropy=("entropy", "mean"),
        same_frame_mass=("same_frame_mass", "mean"),
        text_mass=("text_mass", "mean"),
        top10=("top10", "mean"),
        max_sink_ratio=("sink_ratio", "max"),
    )
    return summary.reset_index()


def figure_html(data: bytes | None, mime: str, name: str, caption: str = "") -> Markup:
    """One figure element (nothing when the figure could not be drawn); name and caption are text."""
    if data is None:
        return Markup()
    add_figure(name, data)  # also as figures/NAME.png and .svg inside figure_files
    text = format_html("<figcaption>{}</figcaption>", caption) if caption else Markup()
    return format_html("<figure data-figure='{}'>{}{}</figure>", name, _img(data, mime, name), text)


def table_html(frame: pd.DataFrame) -> Markup:
    """A DataFrame as an HTML table (3 decimals, a dash for missing values), headers and cells escaped; a table
    wider than the page scrolls sideways in its own box instead of widening the page."""
    table = Markup(frame.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="–", border=0, escape=True))
    return format_html('<div class="table-wrap">{}</div>', table)


def key_value_table(rows: Mapping[object, object]) -> Markup:
    """A two-column table, a header cell and a value per row, both escaped unless Markup."""
    cells = Markup("").join(
        format_html("<tr><th style='text-align:left'>{}</th><td style='text-align:left'>{}</td></tr>", key, value)
        for key, value in rows.items()
    )
    return format_html("<table>{}</table>", cells)


def page(title: str, heading: str, parts: Iterable[object]) -> str:
    """A whole self-contained HTML page: head with the shared style, a heading, the parts. Title and
    heading are text; so is every part that is not Markup (it shows up escaped, never as markup)."""
    head = format_html(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{}</title><style>{}</style></head><body>",
        title,
        Markup(STYLE),
    )
    return "\n".join([head, format_html("<h1>{}</h1>", heading), *(escape(part) for part in parts), "</body></html>"])


@writes_figures
def write_report(
    path: Path,
    run: dict[str, Any],
    stats: pd.DataFrame,
    maps: dict[str, torch.Tensor],
    videos: dict[str, np.ndarray],
    structure: Structure,
) -> None:
    """Write report.html for a run directory: one self-contained file (inline PNG/GIF; the explorer's one script
    and its JSON data, no network).
    The report renders the finished structure analysis; it computes nothing of its own."""
    parts: list[Markup] = []
    if run.get("trained") is False:
        parts.append(
            Markup("<p class='note'>This model has <b>random weights</b>: its attention is close to uniform.</p>")
        )
    parts += _overview(run, structure)

    parts += analyze_findings_section(structure)
    for note in run.get("notes", []):
        parts.append(format_html("<p class='note'>{}</p>", note))

    parts.append(Markup("<h2>Per-layer summary</h2>"))
    grid = run["layout"]["grid"]
    if grid:
        parts.append(
            format_html(
                "<p>Uniform attention would put {:.3f} of a video query's mass on its own frame.</p>", 1 / grid[0]
            )
        )
    parts.append(table_html(layer_summary(stats)))

    parts += _structure_section(run, maps, structure)
    parts += explorer_section(run, maps, videos)  # the attention explorer, built from the token maps
    parts.append(Markup("<h2>Entropy by layer and step</h2>"))
    parts.append(figure_html(figures.entropy_heatmap(stats), "image/png", "entropy heatmap"))
    parts.append(Markup("<h2>Frame-to-frame attention</h2>"))
    for prefix in sorted({str(n.generation) for n in _parsed(maps) if n.key == "frame_map" and n.step is None}):
        parts.append(figure_html(figures.frame_maps(maps, prefix), "image/png", f"frame maps {prefix}", prefix))
    parts += _locality_section(run, maps)
    parts += _heads_section(structure)
    parts += _text_section(structure)
    parts += _sinks_section(structure)
    parts.append(Markup("<h2>Generated videos</h2>"))
    for name, frames in videos.items():
        index = int(name.split(".")[0][1:]) if name.startswith("p") else -1
        prompt = run["prompts"][index] if 0 <= index < len(run["prompts"]) else ""
        parts.append(figure_html(gif_bytes(frames), "image/gif", name, f"{name}: {prompt}"))
    path.write_text(page("vditscope report", "vditscope attention report", parts))


def _parsed(maps: dict[str, torch.Tensor]) -> list[MapName]:
    return [n for n in (parse_map_name(name) for name in maps) if n is not None]


def _overview(run: dict[str, Any], structure: Structure) -> list[Markup]:
    similarity = run.get("similarity") or {}
    first = first_token_share(structure.text)
    overview: dict[str, object] = {
        "model": run["model"],
        "family": run["family"],
        "layers": run["layers"],
        "heads": run["heads"],
        "video grid (frames x h x w tokens)": " x ".join(map(str, run["layout"]["grid"] or [])),
        "text tokens in self-attention": run["layout"]["text_tokens"],
        "denoising steps (captured)": f"{run['steps']} ({len(run.get('captured_steps', []))})",
        "prompts": Markup("<br>").join(run["prompts"]),
        "seeds": ", ".join(map(str, run["seeds"])),
        "device, dtype": f"{run.get('device')}, {run.get('dtype')}",
        "time (s)": run["seconds"],
    }
    if run.get("plan"):
        layers = sorted({layer for edit in run.get("plan_edits", []) for layer in (edit.get("layers") or [])})
        overview["sparsity plan applied"] = f"{run['plan']} (layers {', '.join(map(str, layers))})"
    for axis, value in similarity.items():
        overview[f"map similarity across {axis} (mean Pearson r)"] = "–" if value != value else f"{value:.3f}"
    if not first.empty:
        overview["first text token's share of text attention (mean over layers)"] = (
            f"{float(first['first_token_share'].mean()):.3f} of {int(first['text_tokens'].iloc[0])} tokens"
        )
    if not structure.heads.empty:
        counts = structure.heads["class"].value_counts()
        overview["head classes"] = ", ".join(f"{name} {int(n)}" for name, n in counts.items())
    return [Markup("<h2>Overview</h2>"), key_value_table(overview)]


def _structure_section(run: dict[str, Any], maps: dict[str, torch.Tensor], structure: Structure) -> list[Markup]:
    parts = [Markup("<h2 id='similarity'>Structure: how similar the attention maps are</h2>")]
    table = structure.similarity_table()
    if table.empty:
        parts.append(Markup("<p>One generation and one map step: nothing to compare.</p>"))
    else:
        source = table["map"].iloc[0].replace("_", " ")
        parts.append(
            format_html(
                "<p>Pearson correlation between {}s (all heads of a layer together) of different prompts, "
                "of different seeds with the same prompt, and of different denoising steps of the same generation; "
                "the mean over pairs. High values across prompts are the paper's finding that attention structure "
                "is largely shared.</p>",
                source,
            )
        )
        pivot = table.pivot_table(index="layer", columns="axis", values="mean_similarity").reset_index()
        pivot.columns.name = None
        parts.append(table_html(pivot))
        parts.append(figure_html(figures.similarity_by_layer(table), "image/png", "similarity by layer"))
        prompts = structure.similarity["prompts"]
        labels = [f"p{i}" for i in prompts.labels]
        parts.append(
            figure_html(
                figures.similarity_matrices(prompts.matrices, labels, "Prompt x prompt correlation per layer"),
                "image/png",
                "prompt similarity matrices",
                "; ".join(f"p{i}: {p}" for i, p in enumerate(run["prompts"])),
            )
        )
        steps = structure.similarity["steps"]
        parts.append(
            figure_html(
                figures.similarity_matrices(steps.matrices, [str(s) for s in steps.labels], "Step x step correlation"),
                "image/png",
                "step similarity matrices",
            )
        )
    token_names = [n for n in _parsed(maps) if n.key == "token_map" and n.kind == "self"]
    if token_names:
        generation = min(token_names, key=lambda n: (n.prompt, n.seed)).generation
        steps_here = sorted({n.step for n in token_names if n.generation == generation})
        tiles = next(iter(maps[str(token_names[0])].shape[1:2]))
        parts.append(
            format_html(
                "<p>Token maps: the video tokens in sequence order (frame, row, column) pooled into {} tiles; "
                "row = query tile, column = key tile, colour = log10 of the mean mass, mean over heads.</p>",
                tiles,
            )
        )
        for step in steps_here:
            names = sorted(
                (str(n) for n in token_names if n.generation == generation and n.step == step),
                key=lambda n: int(n.rsplit("layer", 1)[1]),
            )
            title = f"{generation}, step {step}"
            parts.append(
                figure_html(figures.token_maps(maps, names, f"Token maps, {title}"), "image/png", title, title)
            )
    return parts


def _locality_section(run: dict[str, Any], maps: dict[str, torch.Tensor]) -> list[Markup]:
    grid = run["layout"]["grid"]
    if not grid:
        return []
    parts = [Markup("<h2>Locality</h2>")]
    num_tokens = grid[0] * grid[1] * grid[2] + (run["layout"]["text_tokens"] or 0)
    time_base, space_base = uniform_locality(*grid, num_tokens)
    parts.append(
        Markup(
            "<p>Attention mass by distance divided by the mass uniform attention would put there "
            "(the dashed line is uniform).</p>"
        )
    )
    for key, base, xlabel, title in (
        ("locality_time", time_base, "frame distance |dt|", "Mass by frame distance"),
        ("locality_space", space_base, "spatial ring max(|dy|,|dx|)", "Same-frame mass by spatial distance"),
    ):
        parts.append(figure_html(figures.locality_curves(maps, key, base, xlabel, title), "image/png", title))
    return parts


def _heads_section(structure: Structure) -> list[Markup]:
    if structure.heads.empty:
        return []
    return [
        Markup("<h2 id='heads'>Heads: spatial, temporal, mixed, sink-dominated</h2>"),
        format_html("<p>Rule: {}</p>", HEAD_RULE),
        figure_html(figures.head_classes(structure.heads), "image/png", "head classes"),
        format_html("<details><summary>Per-head masses</summary>{}</details>", table_html(structure.heads)),
    ]


def _text_section(structure: Structure) -> list[Markup]:
    if structure.text.empty:
        return []
    parts = [
        Markup("<h2 id='text-attention'>Text attention</h2>"),
        Markup(
            "<p>Mass that video queries give each text token (mean over heads, prompts and steps; the first "
            "text token in red), and the first token's share of all text attention (text-token dominance).</p>"
        ),
        table_html(first_token_share(structure.text)),
    ]
    for kind in ("self", "cross"):
        parts.append(figure_html(figures.text_attention(structure.text, kind), "image/png", f"text attention {kind}"))
    return parts


def _sinks_section(structure: Structure) -> list[Markup]:
    if structure.sinks.empty:
        return []
    sinks = structure.sinks.sort_values("sink_ratio", ascending=False)
    found = int(sinks["sink"].sum())
    return [
        Markup("<h2 id='sinks'>Attention sinks</h2>"),
        format_html(
            "<p>The most attended key of each head; it counts as a sink when it receives at least {:g}x "
            "the median key's mass, the median floored at the uniform share 1/N (sink_ratio). {} of {} heads have one. "
            "consistency = share of "
            "generations and steps in which the same key is the most attended one; sink_mass = mean mass a query "
            "puts on it.</p>",
            SINK_RATIO,
            found,
            len(sinks),
        ),
        table_html(sinks.head(24)),
    ]
