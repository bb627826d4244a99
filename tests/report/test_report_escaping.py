"""Every HTML report escapes what comes from users and input files (issue 13, item 5).

Each report writer is rendered from small inputs shaped like the real ones, with a hostile string in
every string field it shows: model paths, families, prompts, texts, token strings, notes, plan fields,
table cells, run.json fields of compared runs. The page must show each value verbatim as text (so it
was rendered, once escaped) and contain no markup from it: no script, no event attribute, no foreign
image, no comment that swallows the rest. The same strings reach the matplotlib figures (titles,
legends, tick labels), where a pair of dollar signs must not start a mathtext parse that crashes.
"""

from __future__ import annotations

import itertools
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch

if TYPE_CHECKING:
    from vditscope.analyses.sinks import SinkResult

HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>$\\frac{$ &amp; </script><!--"
SHOWN = "<script>alert(1)</script>"  # the part of HOSTILE that survives any quoting (JSON)
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b", "br", "code", "pre",
    "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption", "img", "details", "summary", "div",
    "label", "select", "option", "canvas",  # the attention explorer's controls and view
    "ul", "li", "a",  # the findings list and its links to the sections
}  # fmt: skip
# The analyze report's attention explorer: its JSON data block and its own code, the only scripts a report has.
EXPLORER_SCRIPTS = re.compile(
    r"<script type='application/json' id='vx-data'>(?P<data>.*?)</script>\s*<script>(?P<code>.*?)</script>", re.S
)


def without_explorer_scripts(text: str) -> tuple[str, int]:
    """The page without the explorer's script blocks, and how many there were, after checking each: the data is
    JSON holding no <, > or & (so no value in it can close the script, open a comment or show unescaped) and
    the code is the explorer's constant, character for character (so nothing from the run is in it)."""
    from vditscope.report.explorer import EXPLORER_JS

    found = list(EXPLORER_SCRIPTS.finditer(text))
    for match in found:
        assert not set(match["data"]) & set("<>&"), "the explorer's JSON holds a raw <, > or &"
        json.loads(match["data"])
        assert match["code"] == EXPLORER_JS, "the explorer's script is not the explorer's own code"
    return EXPLORER_SCRIPTS.sub("", text), len(found)


def hostile(field: str) -> str:
    """HOSTILE tagged with the field it is put in, so the page check can tell which fields it shows."""
    return f"[{field}]{HOSTILE}"


class _Page(HTMLParser):
    """What a browser would build from the page: tags, attributes, text, comments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.texts: list[str] = []
        self.comments: list[str] = []
        self.closed_html = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(name, value or "") for name, value in attrs]

    def handle_endtag(self, tag: str) -> None:
        self.closed_html |= tag == "html"

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def check_page(path: Path, shown: list[str], shown_quoted: tuple[str, ...] = ()) -> int:
    """No markup came from a hostile value, and each field in ``shown`` is on the page verbatim as text
    or attribute value (those in ``shown_quoted`` up to the first quote: JSON quotes it). Returns the number
    of explorer script blocks, checked and taken out before the rest is checked: no other script may remain."""
    text, explorers = without_explorer_scripts(path.read_text(encoding="utf-8"))
    assert "<script" not in text.lower() and "<img src=x" not in text and "<!--" not in text
    assert "&lt;script&gt;alert(1)" in text  # the escaped form is there: the values were rendered
    # and only HOSTILE's tags are escaped: the report's own markup is never shown as text
    assert set(re.findall(r"&lt;/?([a-z0-9]+)", text)) == {"script", "img"}
    page = _Page()
    page.feed(text)
    page.close()
    assert page.closed_html, "the page does not parse to its end"
    assert not page.comments
    assert set(page.tags) <= ALLOWED_TAGS, set(page.tags) - ALLOWED_TAGS
    assert not [name for name, _ in page.attrs if name.startswith("on")]
    assert all(value.startswith("data:image/") for name, value in page.attrs if name == "src")
    strings = page.texts + [value for _, value in page.attrs]
    missing = [field for field in shown if not any(hostile(field) in s for s in strings)]
    missing += [field for field in shown_quoted if not any(f"[{field}]{SHOWN}" in s for s in strings)]
    assert not missing, f"not shown verbatim: {missing}"
    return explorers


def _video(frames: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, size, size, 3)).astype(np.float32)


# -- analyze ---------------------------------------------------------------------------------------
def test_analyze_report(tmp_path: Path) -> None:
    from vditscope.analyses.structure import analyze_structure
    from vditscope.report.html import write_report

    rng = np.random.default_rng(0)
    heads, grid, text_tokens = 2, (3, 2, 2), 4
    rows = [
        {"layer": layer, "kind": kind, "branch": "cond", "step": step, "head": head, "generation": g,
         "entropy": rng.random(), "same_frame_mass": rng.random(), "same_position_mass": rng.random() / 4,
         "text_mass": rng.random() / 4, "top10": rng.random(), "sink_mass": rng.random() / 10,
         "sink_ratio": 5 + 20 * rng.random(), "sink_index": int(rng.integers(0, 3))}
        for layer, kind, step, head, g in itertools.product(range(2), ("self", "cross"), range(2), range(heads), (0, 1))
    ]  # fmt: skip
    stats = pd.DataFrame(rows)
    gen = torch.Generator().manual_seed(0)
    maps: dict[str, torch.Tensor] = {}
    for layer in range(2):
        maps[f"frame_map.p0.s0.self.layer{layer}"] = torch.rand(heads, 3, 3, generator=gen)
        maps[f"text_received.p0.s0.cross.layer{layer}"] = torch.rand(heads, text_tokens, generator=gen)
        maps[f"locality_time.p0.s0.self.layer{layer}"] = torch.rand(heads, grid[0], generator=gen)
        maps[f"locality_space.p0.s0.self.layer{layer}"] = torch.rand(heads, max(grid[1:]), generator=gen)
        for prompt, step in itertools.product(range(2), range(2)):
            maps[f"token_map.p{prompt}.s0.step{step}.self.layer{layer}"] = torch.rand(heads, 6, 6, generator=gen)
    layout = {"grid": list(grid), "text_tokens": text_tokens, "text_position": "after"}
    labels = {0: [hostile(f"token{i}") for i in range(text_tokens)]}  # tick labels of the text figure
    structure = analyze_structure(stats, maps, layout, labels)
    assert not structure.text.empty and not structure.similarity_table().empty
    run = {
        "model": hostile("model"), "family": hostile("family"), "trained": True, "layers": 2, "heads": heads,
        "layout": layout, "prompts": [hostile("prompt0"), hostile("prompt1")], "seeds": [0], "steps": 2,
        "captured_steps": [0, 1], "device": hostile("device"), "dtype": hostile("dtype"), "plan": hostile("plan"),
        "plan_edits": [{"layers": [0, 1]}], "similarity": {"prompts": 0.5}, "seconds": 1.0,
        "notes": [hostile("note")],
    }  # fmt: skip
    videos = {"p0.s0": _video(), "p1.s0": _video(seed=1)}
    path = tmp_path / "report.html"
    write_report(path, run, stats, maps, videos, structure)
    explorers = check_page(path, ["model", "family", "prompt0", "prompt1", "device", "dtype", "plan", "note"])
    assert explorers == 1, "the analyze report has no attention explorer"


# -- sweep -----------------------------------------------------------------------------------------
def _sweep_table() -> pd.DataFrame:
    from vditscope.analyses.sweep import TABLE_COLUMNS

    rows = []
    for layer, k in itertools.product((-1, 0, 1), (0.0, 0.5)):
        rows.append(
            {"mode": "sparsity", "scope": "per-layer", "method": "bottom-k", "mask": "",
             "layers": hostile("cell-layers") if layer < 0 else str(layer), "layer": layer, "k": k, "p": np.nan,
             "temperature": 1.0, "prompt": hostile("cell-prompt"), "prompt_index": 0, "seed": 0,
             "psnr": np.inf if k == 0 else 30.0 + layer, "ssim": 1.0 - k / 2, "latent_mse": k / 10, "lpips": np.nan,
             "sparsity": k / 4, "mass_dropped": k / 10, "edited_sparsity": k, "model_mass_dropped": k / 10,
             "head_masks": hostile("head-masks") if layer < 0 else f"{layer + 1}:st"}
        )  # fmt: skip
    return pd.DataFrame(rows)[TABLE_COLUMNS]


def test_sweep_report(tmp_path: Path) -> None:
    from vditscope.report.sweep_html import write_sweep_report

    meta = {
        "model": hostile("model"), "family": hostile("family"), "mode": hostile("mode"), "scope": hostile("scope"),
        "method": hostile("method"), "levels": [0.5], "temperatures": [1.0], "steps": None,
        "branches": [hostile("branch")], "prompts": [hostile("prompt")], "seeds": [0], "cells": 6,
        "cells_reused": 0, "notes": [hostile("note")],
    }  # fmt: skip
    plan = {"target_psnr": 25.0, "rule": hostile("plan-rule"), "layers": {hostile("plan-layer"): 0.5}}
    path = tmp_path / "report.html"
    write_sweep_report(path, meta, _sweep_table(), plan)
    shown = ["model", "family", "mode", "scope", "method", "branch", "prompt", "note", "plan-rule"]
    check_page(path, [*shown, "cell-layers", "cell-prompt"], ("plan-layer",))


# -- compare ---------------------------------------------------------------------------------------
def test_compare_report(tmp_path: Path) -> None:
    from vditscope.analyses.compare import COLUMNS, Comparison, RunData
    from vditscope.report.compare_html import write_compare_report
    from vditscope.report.figures import comparison_bars

    table = pd.DataFrame(
        [{"layer_a": layer, "layer_b": layer + 1, "pairs": 2, "similarity": 0.8, "within_a": 0.9,
          "map": hostile("map")} for layer in range(3)],
        columns=COLUMNS,
    )  # fmt: skip
    runs = [
        RunData(path=Path("/runs") / hostile(f"path-{x}"), maps={},
                run={"model": hostile(f"model-{x}"), "family": hostile(f"family-{x}"), "prompts": [hostile("p")]})
        for x in "ab"
    ]  # fmt: skip
    comparison = Comparison(table=table, run_a=runs[0], run_b=runs[1], notes=[hostile("note")])
    figure = comparison_bars(table, hostile("name-a"), hostile("name-b"))
    path = tmp_path / "compare.html"
    write_compare_report(path, comparison, figure)
    check_page(path, ["path-a", "path-b", "model-a", "model-b", "family-a", "family-b", "note", "map"])


# -- edit-sweep and text ablation ------------------------------------------------------------------
def test_edit_sweep_report(tmp_path: Path) -> None:
    from vditscope.report.figures import edit_sweep_bars
    from vditscope.report.study_html import write_edit_sweep_report

    table = pd.DataFrame(
        [{"layers": "none", "first_layer": -1, "ssim_to_source": 0.5, "psnr_to_source": 20.0},
         {"layers": hostile("window"), "first_layer": 0, "ssim_to_source": 0.8, "psnr_to_source": 25.0}]
    )  # fmt: skip
    path = tmp_path / "report.html"
    write_edit_sweep_report(
        path, hostile("source"), hostile("target"), hostile("mode"), 1, (0, 2), table, edit_sweep_bars(table)
    )
    check_page(path, ["source", "target", "mode", "window"])


def test_text_ablation_report(tmp_path: Path) -> None:
    from vditscope.report.study_html import write_text_ablation_report

    prompts, methods = [hostile("prompt0"), hostile("prompt1")], ["mask", hostile("method")]
    table = pd.DataFrame(
        [{"prompt": prompt, "method": method, "ssim": 0.9, "psnr": 30.0, "frame_mse": 0.01}
         for prompt, method in itertools.product(prompts, methods)]
    )  # fmt: skip
    videos = {f"p{p}.{m}": _video(seed=p) for p in range(2) for m in ["full", *methods]}
    path = tmp_path / "report.html"
    write_text_ablation_report(path, hostile("model"), hostile("family"), 0, prompts, methods, table, videos)
    check_page(path, ["model", "family", "prompt0", "prompt1", "method"])


# -- sinks -----------------------------------------------------------------------------------------
def _sink_result(
    kind: str, model: str, family: str, tokens: list[str], threshold: float
) -> tuple[SinkResult, pd.DataFrame]:
    from vditscope.analyses.sink_tables import consistency, key_table, layer_summary, text_labels, where_table
    from vditscope.analyses.sinks import SinkResult
    from vditscope.stats.key_stats import key_stats

    heads, n = 2, len(tokens)
    keys, calls = [], []
    for layer in range(2):
        g = torch.Generator().manual_seed(layer)
        q, k, v = (torch.randn(1, heads, n, 8, generator=g) for _ in range(3))
        k[:, :, 3] *= 6  # a key every query prefers: a sink on the hostile token 3
        q += 0.5 * k[:, :, 3:4]
        table = key_table(key_stats(q, k, v), layer, text_labels(tokens, set()), keep=None, threshold=threshold)
        keys.append(table)
        for generation, step in itertools.product(range(2), range(2)):
            calls.append(table.assign(generation=generation, step=step, branch="cond", sample=0))
    keys_table = pd.concat(keys, ignore_index=True)
    assert keys_table["sink"].any()
    calls_table = pd.concat(calls, ignore_index=True)
    overlap = consistency(calls_table, threshold)
    summary = layer_summary(keys_table, heads).merge(overlap, on="layer", how="left")
    metric = "psnr" if kind == "video" else "loss"
    ablation = pd.DataFrame(
        [{"path": path, "keys": selection, "layers": "0,1", "prompt": hostile("ablation-prompt"), metric: 20.0}
         for path, selection in itertools.product(("mask", "zero-values"), ("sinks", "random"))]
    )  # fmt: skip
    result = SinkResult(kind, model, family, keys_table, summary, where_table(keys_table), overlap, ablation)
    return result, calls_table


def test_sinks_report(tmp_path: Path) -> None:
    from vditscope.report.sinks_html import write_sinks_report

    threshold = 3.0
    tokens = [hostile(f"token{i}") for i in range(9)]
    primary, calls = _sink_result("video", f"/models/{hostile('model')}", hostile("family"), tokens, threshold)
    lm, _ = _sink_result("text", f"/lms/{hostile('lm')}", hostile("lm-family"), tokens, threshold)
    path = tmp_path / "report.html"
    write_sinks_report(path, {"threshold": threshold}, primary, lm, calls)
    check_page(path, ["model", "family", "lm-family", "token3"])


# -- retrain study ---------------------------------------------------------------------------------
def test_retrain_study_report(tmp_path: Path) -> None:
    from vditscope.report.retrain_html import SINK_COLUMNS, write_study_report

    layers = [1]
    sinks = pd.DataFrame(
        [{"model": name, "layer": layer, "retrained": layer in layers, "sink_heads": 1, "heads": 2,
          "max_ratio": 30.0, "median_top_ratio": 12.0, "sink_share": 0.3}
         for name in (hostile("sinks-model"), "retrained") for layer in range(2)],
        columns=SINK_COLUMNS,
    )  # fmt: skip
    sparsity = pd.DataFrame(
        [{"model": name, "layer": 1, "k": k, "psnr": 30.0 - 10 * k, "ssim": 0.9, "mass_dropped": k / 10}
         for name in ("original", "retrained") for k in (0.5, 0.9)]
    )  # fmt: skip
    quality = pd.DataFrame([{"prompt": hostile("quality-prompt"), "seed": 0, "psnr": 25.0, "ssim": 0.8}])
    videos = {"original": _video(), "retrained": _video(seed=1), "prompt": hostile("video-prompt")}
    models = {"original": hostile("original"), "retrained": hostile("retrained")}
    tables = {"sinks": sinks, "sparsity": sparsity, "quality": quality}
    path = tmp_path / "study.html"
    write_study_report(path, models, layers, tables, videos, tmp_path / "no-loss.png")
    check_page(path, ["original", "retrained", "sinks-model", "quality-prompt", "video-prompt"])


# -- the shared layer ------------------------------------------------------------------------------
def test_page_escapes_whatever_is_not_markup() -> None:
    """page() escapes plain strings among its parts and its title; Markup is trusted; format_html
    escapes its arguments after applying their format spec; join escapes its items."""
    from vditscope.report.html import Markup, escape, format_html, key_value_table, page, table_html

    fragment = format_html("<p title='{}'>{:.2f} {}</p>", HOSTILE, 0.123456, Markup("<b>ok</b>"))
    assert isinstance(fragment, Markup) and fragment.startswith("<p title='&lt;script&gt;")
    assert "0.12 <b>ok</b></p>" in fragment and "'><img" not in fragment
    assert escape(fragment) == fragment and escape(HOSTILE) == escape(escape(HOSTILE))
    assert Markup("<br>").join(["<a>", Markup("<i>")]) == "&lt;a&gt;<br><i>"
    text = page(HOSTILE, HOSTILE, [HOSTILE, fragment])
    assert text.count("&lt;script&gt;alert(1)") == 4 and "<script" not in text
    cells = table_html(pd.DataFrame({HOSTILE: [HOSTILE]})) + key_value_table({HOSTILE: HOSTILE})
    assert cells.count("&lt;script&gt;alert(1)") == 4 and "<script" not in cells and "<!--" not in cells


@pytest.mark.parametrize("label", [HOSTILE, "$x^$", "$$", "$\\undefinedmacro$"])
def test_figures_draw_any_text_literally(label: str) -> None:
    """A label with dollar signs is drawn as it is, not parsed as mathtext (which can raise)."""
    from vditscope.report.figures import figure_png, plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks([0, 1], [label, label])
    ax.plot([0, 1], [0, 1], label=label)
    ax.legend()
    ax.set_title(label)
    fig.suptitle(label)
    assert figure_png(fig).startswith(b"\x89PNG")
