"""A self-contained HTML report: tables and inline images (PNG figures, GIF videos), readable offline."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..stats.streaming import uniform_locality
from . import figures

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}.note{background:#fff6d6;padding:.6em 1em;border-left:4px solid #e0b000}
figure{display:inline-block;margin:.5em}figcaption{font-size:.8em;color:#555;text-align:center}
img{max-width:100%}
"""


def _img(data: bytes | None, mime: str, alt: str) -> str:
    if data is None:
        return ""
    encoded = base64.b64encode(data).decode()
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _gif(frames: np.ndarray) -> bytes:
    import imageio.v3 as iio

    video = (np.clip(frames, 0, 1) * 255).astype(np.uint8)
    scale = max(1, 128 // max(video.shape[1], 1))
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    buffer = io.BytesIO()
    iio.imwrite(buffer, list(video), extension=".gif", duration=120, loop=0)
    return buffer.getvalue()


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


def write_report(
    path: Path,
    run: dict[str, Any],
    stats: pd.DataFrame,
    maps: dict[str, torch.Tensor],
    videos: dict[str, np.ndarray],
) -> None:
    """Write report.html for a run directory."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>vditscope report</title><style>{STYLE}</style>"
        "</head><body>",
        "<h1>vditscope attention report</h1>",
    ]
    if run.get("trained") is False:
        parts.append("<p class='note'>This model has <b>random weights</b>: its attention is close to uniform.</p>")
    overview = {
        "model": run["model"],
        "family": run["family"],
        "layers": run["layers"],
        "heads": run["heads"],
        "video grid (frames x h x w tokens)": " x ".join(map(str, run["layout"]["grid"] or [])),
        "text tokens in self-attention": run["layout"]["text_tokens"],
        "denoising steps": run["steps"],
        "prompts": "<br>".join(html.escape(p) for p in run["prompts"]),
        "seeds": ", ".join(map(str, run["seeds"])),
        "time (s)": run["seconds"],
    }
    parts.append("<h2>Overview</h2><table>")
    parts += [
        f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
        for k, v in overview.items()
    ]
    parts.append("</table>")
    for note in run.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")

    parts.append("<h2>Per-layer summary</h2>")
    grid = run["layout"]["grid"]
    if grid:
        parts.append(f"<p>Uniform attention would put {1 / grid[0]:.3f} of a video query's mass on its own frame.</p>")
    parts.append(layer_summary(stats).to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="–"))

    parts.append("<h2>Entropy by layer and step</h2>")
    parts.append(_img(figures.entropy_heatmap(stats), "image/png", "entropy heatmap"))
    parts.append("<h2>Frame-to-frame attention</h2>")
    for prefix in sorted(
        {name.split(".")[1] + "." + name.split(".")[2] for name in maps if name.startswith("frame_map.")}
    ):
        parts.append(f"<h3>{html.escape(prefix)}</h3>")
        parts.append(_img(figures.frame_maps(maps, prefix), "image/png", f"frame maps {prefix}"))
    parts.append("<h2>Locality</h2>")
    if grid:
        num_tokens = grid[0] * grid[1] * grid[2] + (run["layout"]["text_tokens"] or 0)
        time_base, space_base = uniform_locality(*grid, num_tokens)
        parts.append(
            "<p>Attention mass by distance divided by the mass uniform attention would put there "
            "(the dashed line is uniform).</p>"
        )
        for key, base, xlabel, title in (
            ("locality_time", time_base, "frame distance |dt|", "Mass by frame distance"),
            ("locality_space", space_base, "spatial ring max(|dy|,|dx|)", "Same-frame mass by spatial distance"),
        ):
            figure = figures.locality_curves(maps, key, base, xlabel, title)
            parts.append(_img(figure, "image/png", title))
    parts.append("<h2>Generated videos</h2>")
    for name, frames in videos.items():
        parts.append(
            f"<figure>{_img(_gif(frames), 'image/gif', name)}<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
