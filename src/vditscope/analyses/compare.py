"""`vditscope compare`: per-layer similarity of the attention maps of two runs (two models, two
settings), from their run directories alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import VditscopeError
from ..store import OutputDir, RunWriter, files_of, open_run
from ..store.map_names import MapName, parse_map_name
from .results import Comparison, RunData
from .structure import pearson_matrix

COLUMNS = ["layer_a", "layer_b", "pairs", "similarity", "within_a", "map"]
COMPARE_NEEDS = ("run.json", "maps.safetensors")  # what compare reads of an analyze run (older runs included)


def load_run(path: Path) -> RunData:
    """An analyze run's run.json, maps.safetensors and (when present) similarity.parquet, read through the
    run format's reader (``open_run``); one clear error for a missing, foreign or damaged run."""
    run = open_run(path, "analyze", require=COMPARE_NEEDS)
    raw = run.tensors("maps.safetensors")
    maps = {parsed: tensor for name, tensor in raw.items() if (parsed := parse_map_name(name)) is not None}
    similarity = run.table("similarity.parquet") if "similarity.parquet" in run.files else None
    return RunData(path=run.path, run=run.info, maps=maps, similarity=similarity)


def _self_maps(data: RunData, key: str) -> dict[MapName, torch.Tensor]:
    return {n: t for n, t in data.maps.items() if n.key == key and n.kind == "self"}


def _comparable(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Two maps as vectors of equal length: per head when shapes agree, else head means pooled to
    the smaller map size."""
    if a.shape == b.shape:
        return a.float().numpy(), b.float().numpy()
    a2, b2 = a.float().mean(0, keepdim=True), b.float().mean(0, keepdim=True)
    size = (min(a2.shape[-2], b2.shape[-2]), min(a2.shape[-1], b2.shape[-1]))
    pool = torch.nn.functional.adaptive_avg_pool2d
    return pool(a2, size).numpy(), pool(b2, size).numpy()


def _layer_pairs(layers_a: list[int], layers_b: list[int], notes: list[str]) -> list[tuple[int, int]]:
    """Same index when both runs have the same layers; else matched by relative depth."""
    if layers_a == layers_b:
        return [(layer, layer) for layer in layers_a]
    if len(layers_a) < 2 or len(layers_b) < 2:
        common = sorted(set(layers_a) & set(layers_b))
        return [(layer, layer) for layer in common]
    notes.append(
        f"the runs captured different layers ({len(layers_a)} and {len(layers_b)}): layers are matched by "
        "relative depth"
    )
    last_a, last_b = len(layers_a) - 1, len(layers_b) - 1
    return [(layers_a[i], layers_b[round(i * last_b / last_a)]) for i in range(len(layers_a))]


def _prompt_pairs(run_a: dict[str, Any], run_b: dict[str, Any], notes: list[str]) -> dict[int, int]:
    """Prompt index of A -> prompt index of B: by equal text, else by position."""
    prompts_a, prompts_b = run_a.get("prompts", []), run_b.get("prompts", [])
    by_text = {i: prompts_b.index(p) for i, p in enumerate(prompts_a) if p in prompts_b}
    if by_text:
        return by_text
    notes.append("the runs share no prompt: prompts are matched by position")
    return {i: i for i in range(min(len(prompts_a), len(prompts_b)))}


def compare_runs(path_a: Path, path_b: Path) -> Comparison:
    """Per layer, the mean Pearson correlation between matching maps of two runs (same prompt,
    seed and step): token maps when both runs have them, else frame maps averaged over steps."""
    a, b = load_run(path_a), load_run(path_b)
    notes: list[str] = []
    key = "token_map" if _self_maps(a, "token_map") and _self_maps(b, "token_map") else "frame_map"
    maps_a, maps_b = _self_maps(a, key), _self_maps(b, key)
    if key == "frame_map":
        maps_a = {n: t for n, t in maps_a.items() if n.step is None}
        maps_b = {n: t for n, t in maps_b.items() if n.step is None}
    if not maps_a or not maps_b:
        raise VditscopeError("one of the runs has no self-attention maps to compare")
    prompts = _prompt_pairs(a.run, b.run, notes)
    layers = _layer_pairs(sorted({n.layer for n in maps_a}), sorted({n.layer for n in maps_b}), notes)
    if key == "token_map":
        steps_a, steps_b = sorted({n.step for n in maps_a}), sorted({n.step for n in maps_b})
        if steps_a != steps_b:
            notes.append(f"map steps differ ({steps_a} and {steps_b}): only the common ones are compared")
    rows = []
    for layer_a, layer_b in layers:
        values = []
        for name, tensor in maps_a.items():
            if name.layer != layer_a or name.prompt not in prompts:
                continue
            other = MapName(name.key, prompts[name.prompt], name.seed, name.kind, layer_b, name.step)
            if other not in maps_b:
                continue
            x, y = _comparable(tensor, maps_b[other])
            values.append(pearson_matrix([x, y])[0, 1])
        within = float("nan")
        if a.similarity is not None and not a.similarity.empty:
            hit = a.similarity[(a.similarity["layer"] == layer_a) & (a.similarity["axis"] == "prompts")]
            if not hit.empty:
                within = float(hit["mean_similarity"].iloc[0])
        rows.append(
            {
                "layer_a": layer_a,
                "layer_b": layer_b,
                "pairs": len(values),
                "similarity": float(np.nanmean(values)) if values else float("nan"),
                "within_a": within,
                "map": key,
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    if int(table["pairs"].sum()) == 0:
        raise VditscopeError("the runs have no maps in common (same prompt, seed and step): nothing to compare")
    return Comparison(table=table, run_a=a, run_b=b, notes=notes)


COMPARE_FILES = files_of("compare")


def run_compare(run_a: Path, run_b: Path, out: Path, overwrite: bool = False) -> tuple[Comparison, Path]:
    """Compare two runs and write the comparison to ``out`` (checked before anything is read: it may
    not be either run, nor inside or above one)."""
    with OutputDir(out, "compare", files=COMPARE_FILES, inputs=[run_a, run_b], overwrite=overwrite) as output:
        comparison = compare_runs(run_a, run_b)
        write_comparison(comparison, output)
    return comparison, output.path


def write_comparison(comparison: Comparison, output: OutputDir) -> Path:
    """compare.parquet, compare.csv, compare.png and a self-contained compare.html, written atomically."""
    from ..report.compare_html import write_compare_report
    from ..report.figure_files import figure_files
    from ..report.figures import comparison_bars

    with output.staging() as staging, figure_files(staging):
        writer = RunWriter(staging, "compare")
        writer.table("compare.parquet", comparison.table)
        writer.csv("compare.csv", comparison.table)
        figure = comparison_bars(comparison.table, comparison.run_a.path.name, comparison.run_b.path.name)
        writer.bytes("compare.png", figure)
        info = {
            "run_a": {"path": str(comparison.run_a.path), **_model_of(comparison.run_a.run)},
            "run_b": {"path": str(comparison.run_b.path), **_model_of(comparison.run_b.run)},
            "notes": list(comparison.notes),
        }
        writer.json("compare.json", info)
        write_compare_report(writer.path("compare.html", "html"), comparison, figure)
    return output.path


def _model_of(run: dict[str, Any]) -> dict[str, str]:
    """The model and family a compared run names (what compare.html shows of it)."""
    return {"model": str(run.get("model", "")), "family": str(run.get("family", ""))}
