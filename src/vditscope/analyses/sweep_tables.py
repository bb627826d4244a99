"""Pure functions of a sweep's table and of sparsity plans: the level column, the per-layer
sensitivity, the plan a sweep proposes, and reading and checking a plan file. No generation here:
the sweep driver, the report and the planned commands all read these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..capture.intervene import AttentionEdit
from ..errors import VditscopeError

LEVEL_METHODS = ("bottom-k", "top-p", "blocks")
# sweeps whose level is a mass kept (smaller is sparser, 1.0 keeps everything)
MASS_METHODS = ("top-p", "blocks")
PLAN_VERSION = 1


def sparsity_plan(
    table: pd.DataFrame,
    target: float,
    steps: tuple[int, int] | None = None,
    window: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Per layer, the sparsest level whose mean PSNR (over prompts and seeds) stays >= target, from
    the per-layer rows of a sweep; layers with no such level stay dense. A structured-mask sweep
    (one mask, with the sweep's ``window``) plans that mask in every layer that keeps the target."""
    rows = table[(table["scope"] == "per-layer") & (table["layer"] >= 0)]
    if rows.empty:
        return {}
    method = str(rows["method"].iloc[0])
    if method not in LEVEL_METHODS:
        return _mask_plan(rows, method, target, steps, window)
    level = level_column(rows)
    means = rows.groupby(["layer", level])["psnr"].mean().reset_index()
    layers: dict[str, float] = {}
    for layer, group in means.groupby("layer"):
        ok = group[group["psnr"] >= target]
        if method == "bottom-k":
            layers[str(int(layer))] = float(ok[level].max()) if not ok.empty else 0.0
        else:  # top-p, blocks: smaller p is sparser; 1.0 keeps everything
            layers[str(int(layer))] = float(ok[level].min()) if not ok.empty else 1.0
    edits = []
    for layer, value in layers.items():
        if (method == "bottom-k" and value > 0) or (method in MASS_METHODS and value < 1):
            edits.append(level_edit(method, value, frozenset({int(layer)}), steps).to_dict())
    return {
        "vditscope_plan": PLAN_VERSION,
        "method": method,
        "target_psnr": target,
        "rule": f"per layer, the largest sparsity whose mean PSNR against dense stays >= {target:g} dB",
        "layers": layers,
        "edits": edits,
    }


def level_edit(
    method: str, value: float, layers: frozenset[int] | None, steps: tuple[int, int] | None, **where: Any
) -> AttentionEdit:
    """The edit of a level method at one level: bottom-k share, top-p mass or block mass kept."""
    return AttentionEdit(
        bottom_k=value if method == "bottom-k" else 0.0,
        top_p=value if method == "top-p" else None,
        mask="blocks" if method == "blocks" else None,
        block_mass=value if method == "blocks" else None,
        layers=layers,
        steps=steps,
        **where,
    )


def _mask_plan(
    rows: pd.DataFrame, method: str, target: float, steps: tuple[int, int] | None, window: tuple[int, int, int] | None
) -> dict[str, Any]:
    """The plan of a structured-mask sweep: the mask in each layer whose mean PSNR stays >= target."""
    means = rows.groupby("layer")["psnr"].mean()
    layers = {str(int(layer)): (method if psnr >= target else "dense") for layer, psnr in means.items()}
    chosen = frozenset(int(layer) for layer, value in layers.items() if value != "dense")
    edits = []
    if chosen:
        edit = AttentionEdit(mask=method, window=window, layers=chosen, steps=steps)
        edits.append(edit.to_dict())
    return {
        "vditscope_plan": PLAN_VERSION,
        "method": method,
        "target_psnr": target,
        "rule": f"the {method} mask in every layer whose mean PSNR against dense with it alone stays >= {target:g} dB",
        "layers": layers,
        "edits": edits,
    }


def load_plan(path: Path) -> list[AttentionEdit]:
    """The edits of a plan file written by a sweep (clear errors for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise VditscopeError(f"no such plan file: {path}")
    try:
        plan = json.loads(path.read_text())
        if plan.get("vditscope_plan") != PLAN_VERSION:
            raise VditscopeError(f"{path} is not a vditscope sparsity plan")
        return [AttentionEdit.from_dict(edit) for edit in plan["edits"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise VditscopeError(f"{path} is not a valid sparsity plan ({exc})") from exc


def check_plan(
    edits: Sequence[AttentionEdit], *, steps: int | None = None, layers: int | None = None, heads: int | None = None
) -> None:
    """A plan's edits against the schedule (before loading) and the model's layers and heads (once known):
    an index out of range would otherwise edit nothing, silently."""
    for edit in edits:
        if steps is not None and edit.steps is not None and edit.steps[1] > steps:
            raise VditscopeError(
                f"the plan edits steps {edit.steps[0]}:{edit.steps[1]}, but the schedule has {steps} steps"
            )
        if layers is not None and edit.layers is not None and max(edit.layers) >= layers:
            raise VditscopeError(f"the plan edits layer {max(edit.layers)}, but the model has {layers} layers")
        if heads is not None and edit.heads is not None and max(edit.heads) >= heads:
            raise VditscopeError(f"the plan edits head {max(edit.heads)}, but the model has {heads} heads")


def sensitivity_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer (rows) and level (columns): mean PSNR over prompts and seeds, from per-layer rows."""
    rows = table[table["scope"] == "per-layer"]
    if rows.empty:
        return pd.DataFrame()
    level = level_column(rows)
    pivot = rows.pivot_table(index="layer", columns=level, values="psnr", aggfunc="mean")
    pivot.columns = [f"psnr@{level}={c:g}" if isinstance(c, float) else f"psnr@{c}" for c in pivot.columns]
    return pivot.reset_index()


def level_column(table: pd.DataFrame) -> str:
    """The column that holds a sweep's level: k (bottom-k), p (top-p, blocks) or mask (structured)."""
    method = table["method"].iloc[0]
    return "k" if method == "bottom-k" else "p" if method in MASS_METHODS else "mask"


def head_masks(edits: pd.DataFrame) -> str:
    """The window each head of each edited layer used, the majority over the cell's calls: "layer:kinds" per
    layer, one letter per head from head 0 (s spatial, t temporal, - not edited), e.g. "3:sstt" (svg chooses
    per head and call)."""
    if edits.empty:
        return ""
    majority = edits.groupby(["layer", "head"])["mask"].agg(lambda kinds: kinds.value_counts().index[0])
    parts = []
    for layer, group in majority.groupby(level="layer"):
        letters = ["-"] * (int(group.index.get_level_values("head").max()) + 1)
        for (_, head), kind in group.items():
            letters[int(head)] = str(kind)[:1]
        parts.append(f"{layer}:" + "".join(letters))
    return ";".join(parts)


def svg_head_choices(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer and head of an svg sweep: the window it used, spatial or temporal, with the share of the cells
    (prompts, seeds, levels) that agree (from each cell's ``head_masks``, "layer:letters"); empty for other
    sweeps and for runs written before the column existed."""
    if "head_masks" not in table or table.empty:
        return pd.DataFrame()
    letters: dict[tuple[int, int], list[str]] = {}
    for text in table["head_masks"].dropna():
        for part in filter(None, str(text).split(";")):
            layer, _, kinds = part.partition(":")
            if not layer.isdigit() or not kinds or set(kinds) - {"s", "t", "-"}:
                continue  # a run directory is untrusted input: anything else is not a choice
            for head, letter in enumerate(kinds):
                if letter != "-":  # a head the cell did not edit
                    letters.setdefault((int(layer), head), []).append(letter)
    if not letters:
        return pd.DataFrame()
    names = {"s": "spatial", "t": "temporal"}
    rows: dict[int, dict[str, str]] = {}
    for (layer, head), seen in sorted(letters.items()):
        top = max(set(seen), key=seen.count)
        rows.setdefault(layer, {"layer": str(layer)})[f"head {head}"] = (
            f"{names.get(top, top)} ({seen.count(top) / len(seen):.0%})"
        )
    heads = sorted({head for _, head in letters})
    return pd.DataFrame(list(rows.values()), columns=["layer", *(f"head {head}" for head in heads)])
