"""Findings in words: short sentences, each with the numbers it states and the anchor of the figure or
table that shows it, read off the finished tables of an analysis (analyze, sweep, sinks, edit-sweep,
text-ablation). Pure: nothing here is computed beyond selecting from the tables (max, min, mean,
count); a statement the tables cannot support (an empty table, one prompt, no plan) is left out, and
every threshold a statement depends on is quoted in its sentence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import SinkResult
from .structure import (
    SINK_MASS,
    SINK_RATIO,
    SPATIAL_MASS,
    SPATIAL_OVER_TEMPORAL,
    TEMPORAL_MASS,
    Structure,
    first_token_share,
)
from .sweep_tables import LEVEL_METHODS, level_column

# Anchors (HTML ids) of the sections the findings link to.
ANALYZE_ANCHORS = {"similarity": "similarity", "heads": "heads", "text": "text-attention", "sinks": "sinks"}
SWEEP_ANCHORS = {"sensitivity": "sensitivity", "plan": "plan"}
EDIT_SWEEP_ANCHOR = "edit-sweep"
TEXT_ABLATION_ANCHOR = "text-ablation"

HEAD_RULE_SHORT = (
    f"sink-dominated: the top key gets >= {SINK_MASS:.0%} of a query's mass; spatial: >= {SPATIAL_MASS:.0%} "
    f"in the query's own frame and >= {SPATIAL_OVER_TEMPORAL:g}x the mass on its own position in other frames; "
    f"temporal: >= {TEMPORAL_MASS:.0%} on its own position in other frames; else mixed"
)
AXIS_WORDS = {"prompts": "prompts", "seeds": "seeds (same prompt)", "steps": "denoising steps"}
CLASS_WORDS = {"sink": "sink-dominated", "spatial": "spatial", "temporal": "temporal", "mixed": "mixed",
               "unknown": "unclassified (no video layout)"}  # fmt: skip
PATH_WORDS = {"mask": "Hiding {} from every query (mask)", "zero-values": "Zeroing the values of {} (zero-values)"}
_ANCHOR = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class Finding:
    """One statement: the sentence, the numbers it states (as read from the table) and the id of the
    figure or table that shows it."""

    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    anchor: str = ""

    def __post_init__(self) -> None:
        if not _ANCHOR.fullmatch(self.anchor):
            raise ValueError(f"a finding's anchor must be a plain id (a-z, 0-9, -), got {self.anchor!r}")


# -- formatting and selection helpers ---------------------------------------------------------------
def span(values: Iterable[int]) -> str:
    """Sorted integers in words: "3", "1, 2 and 5", runs of three or more as "0-3"."""
    items = sorted({int(v) for v in values})
    runs: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        if j - i >= 2:
            runs.append(f"{items[i]}-{items[j]}")
        else:
            runs += [str(v) for v in items[i : j + 1]]
        i = j + 1
    if len(runs) < 2:
        return "".join(runs)
    return ", ".join(runs[:-1]) + " and " + runs[-1]


def layer_words(layers: Sequence[int]) -> str:
    """'layer 3' or 'layers 1, 2 and 5'."""
    return ("layer " if len(set(layers)) == 1 else "layers ") + span(layers)


def db(value: float) -> str:
    """A PSNR in words: one decimal, or identical frames for an infinite PSNR."""
    return "inf dB (identical frames)" if math.isinf(value) and value > 0 else f"{value:.1f} dB"


def extreme(values: pd.Series, which: str) -> tuple[list[Any], float]:
    """The index labels holding the max (or min) of the finite-or-infinite values, all of them on a tie."""
    values = values.dropna()
    best = float(values.max() if which == "max" else values.min())
    return sorted(values.index[values == best].tolist()), best


def places_words(counts: Sequence[tuple[int, str]]) -> str:
    """'2 on text tokens and 5 on video tokens', leaving out the places with none."""
    named = [f"{count} {place}" for count, place in counts if count]
    return " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- analyze ------------------------------------------------------------------------------------------
def similarity_findings(table: pd.DataFrame, anchor: str = ANALYZE_ANCHORS["similarity"]) -> list[Finding]:
    """Per axis (prompts, seeds, steps): the layers whose maps are most and least alike (mean
    off-diagonal Pearson r of Structure.similarity_table); needs two or more layers with a value."""
    findings = []
    for axis, words in AXIS_WORDS.items():
        rows = table[table["axis"] == axis].dropna(subset=["mean_similarity"]) if len(table) else table
        if len(rows) < 2:
            continue
        values = rows.set_index("layer")["mean_similarity"].astype(float)
        most, high = extreme(values, "max")
        least, low = extreme(values, "min")
        if high == low:
            continue
        source = str(rows["map"].iloc[0]).replace("_", " ")
        mean = float(values.mean())
        text = (
            f"Across {words}, the {source}s are most alike in {layer_words(most)} (mean Pearson r {high:.3f}) "
            f"and least alike in {layer_words(least)} (r {low:.3f}); the mean over {len(values)} layers is {mean:.3f}."
        )
        numbers = {"axis": axis, "most_layers": most, "most_r": high, "least_layers": least, "least_r": low,
                   "mean_r": mean, "layers": len(values)}  # fmt: skip
        findings.append(Finding(text, numbers, anchor))
    return findings


def head_findings(heads: pd.DataFrame, anchor: str = ANALYZE_ANCHORS["heads"]) -> list[Finding]:
    """The head classes (counts, with the rule) and, per spatial/temporal/sink class, the layers with most."""
    if heads.empty:
        return []
    counts = heads["class"].value_counts()
    order = [c for c in ("spatial", "temporal", "mixed", "sink", "unknown") if c in counts] + sorted(
        c for c in counts.index if c not in CLASS_WORDS
    )
    listed = ", ".join(f"{int(counts[c])} {CLASS_WORDS.get(c, c)}" for c in order)
    text = f"Of {len(heads)} heads, {listed} ({HEAD_RULE_SHORT}; cond branch, means over generations and steps)."
    findings = [Finding(text, {"heads": len(heads), **{c: int(counts[c]) for c in order}}, anchor)]
    for name in ("spatial", "temporal", "sink"):
        if name not in counts:
            continue
        per_layer = heads[heads["class"] == name].groupby("layer").size()
        layers, most = extreme(per_layer, "max")
        text = f"Most {CLASS_WORDS[name]} heads are in {layer_words(layers)} ({int(most)} each)."
        if len(layers) == 1:
            text = f"Most {CLASS_WORDS[name]} heads are in layer {layers[0]} ({int(most)})."
        findings.append(Finding(text, {"class": name, "layers": layers, "count": int(most)}, anchor))
    return findings


def text_findings(text: pd.DataFrame, anchor: str = ANALYZE_ANCHORS["text"]) -> list[Finding]:
    """Per attention kind: the first text token's share of the text attention (mean, highest and lowest
    layer, against uniform), and the text token with the largest mean share."""
    shares = first_token_share(text)
    findings = []
    for kind in ("cross", "self"):
        rows = shares[shares["kind"] == kind].dropna(subset=["first_token_share"])
        if rows.empty:
            continue
        values = rows.set_index("layer")["first_token_share"].astype(float)
        mean = float(values.mean())
        tokens = sorted(set(rows["text_tokens"].astype(int)))
        site = "cross-attention" if kind == "cross" else "joint self-attention"
        sentence = f"In {site}, video queries give the first text token {mean:.3f} of their text attention"
        numbers: dict[str, Any] = {"kind": kind, "mean_share": mean, "layers": len(values)}
        sentence += f" (mean over {_plural(len(values), 'layer')}"
        if len(tokens) == 1:
            sentence += f"; uniform over its {tokens[0]} text tokens would give {1 / tokens[0]:.3f})"
            numbers.update(text_tokens=tokens[0], uniform=1 / tokens[0])
        else:
            sentence += ")"
        high_layers, high = extreme(values, "max")
        low_layers, low = extreme(values, "min")
        if high != low:
            sentence += (
                f"; most in {layer_words(high_layers)} ({high:.3f}), least in {layer_words(low_layers)} ({low:.3f})"
            )
            numbers.update(high_layers=high_layers, high=high, low_layers=low_layers, low=low)
        findings.append(Finding(sentence + ".", numbers, anchor))
        per_token = text[(text["kind"] == kind)].groupby("token_index")["share"].mean()
        tops, top = extreme(per_token, "max")
        if tops and tops != [0]:
            names = text[(text["kind"] == kind) & text["token_index"].isin(tops)].drop_duplicates("token_index")
            label = ", ".join(f"{int(r.token_index)} '{r.token}'" for r in names.itertuples())
            if len(tops) == 1:
                top_text = f"In {site}, the text token with the largest mean share is token {label} ({top:.3f})."
            else:
                top_text = (
                    f"In {site}, the text tokens with the largest mean share are tokens {label} ({top:.3f} each)."
                )
            findings.append(Finding(top_text, {"kind": kind, "tokens": tops, "share": top}, anchor))
    return findings


def structure_sink_findings(sinks: pd.DataFrame, anchor: str = ANALYZE_ANCHORS["sinks"]) -> list[Finding]:
    """How many heads have a sink (most attended key >= SINK_RATIO x the median key), in which layers,
    where those keys sit, and the strongest one."""
    if sinks.empty:
        return []
    rule = f"a most-attended key receiving >= {SINK_RATIO:g}x the median key's mass (the median floored at 1/N)"
    found = sinks[sinks["sink"].astype(bool)]
    top = sinks.loc[sinks["sink_ratio"].astype(float).idxmax()]
    strongest = {"layer": int(top["layer"]), "head": int(top["head"]), "ratio": float(top["sink_ratio"])}
    where = f" at {top['where']}" if str(top["where"]) else ""
    if found.empty:
        text = (
            f"None of the {len(sinks)} heads has a sink ({rule}); the largest ratio is "
            f"{strongest['ratio']:.1f}x (layer {strongest['layer']} head {strongest['head']})."
        )
        return [Finding(text, {"heads": len(sinks), "sink_heads": 0, **strongest}, anchor)]
    layers = sorted({int(v) for v in found["layer"]})
    places = found["where"].astype(str).str.split(" ").str[0]
    text_keys, video_keys = int((places == "text").sum()), int((places == "video").sum())
    text = (
        f"{len(found)} of {len(sinks)} heads have a sink ({rule}), in {layer_words(layers)}; "
        f"the strongest is layer {strongest['layer']} head {strongest['head']}{where} "
        f"({strongest['ratio']:.1f}x)."
    )
    numbers = {"heads": len(sinks), "sink_heads": len(found), "layers": layers, **strongest}
    findings = [Finding(text, numbers, anchor)]
    if text_keys + video_keys:
        findings.append(
            Finding(
                f"Where the {len(found)} sink keys sit: "
                f"{places_words([(text_keys, 'on text tokens'), (video_keys, 'on video tokens')])}.",
                {"text": text_keys, "video": video_keys, "sink_heads": len(found)},
                anchor,
            )
        )
    return findings


def analyze_findings(structure: Structure) -> list[Finding]:
    """The findings of an analyze run, in report order."""
    return [
        *similarity_findings(structure.similarity_table()),
        *head_findings(structure.heads),
        *text_findings(structure.text),
        *structure_sink_findings(structure.sinks),
    ]


# -- sweep ---------------------------------------------------------------------------------------------
def _per_layer_rows(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty or "scope" not in table:
        return table.iloc[0:0]
    return table[(table["scope"] == "per-layer") & (table["layer"] >= 0)]


def sensitivity_findings(table: pd.DataFrame, anchor: str = SWEEP_ANCHORS["sensitivity"]) -> list[Finding]:
    """The most and least sensitive layers: mean PSNR against dense (over prompts and seeds, the values
    of sensitivity_table) when that layer alone is sparsified, at the sweep's sparsest level (bottom-k:
    largest k; top-p: smallest p) or per structured mask; needs two or more layers."""
    rows = _per_layer_rows(table)
    if rows.empty or rows["layer"].nunique() < 2:
        return []
    method = str(rows["method"].iloc[0])
    level = level_column(rows)
    values = rows[level].dropna()
    if method in LEVEL_METHODS:
        chosen = [values.max() if method == "bottom-k" else values.min()]
    else:
        chosen = sorted(values.unique())
    findings = []
    for value in chosen:
        psnr = rows[rows[level] == value].groupby("layer")["psnr"].mean()
        if psnr.dropna().nunique() < 2:
            continue
        most, low = extreme(psnr, "min")
        least, high = extreme(psnr, "max")
        at = f"{level} = {value:g}" if method in LEVEL_METHODS else f"mask {value}"
        text = (
            f"With one layer at a time sparsified ({method}, {at}), {layer_words(most)} "
            f"{'is' if len(most) == 1 else 'are'} the most sensitive (mean PSNR against dense {db(low)}) and "
            f"{layer_words(least)} the least ({db(high)}), over {len(psnr)} layers."
        )
        numbers = {"method": method, "level": value, "most_layers": most, "most_psnr": float(low),
                   "least_layers": least, "least_psnr": float(high), "layers": len(psnr)}  # fmt: skip
        findings.append(Finding(text, numbers, anchor))
    return findings


def plan_levels(plan: dict[str, Any] | None) -> dict[int, float] | None:
    """A plan's level per layer, or None for no plan or one not shaped like sparsity_plan's (it is
    read from a file: nothing is stated about a plan that cannot be read)."""
    if not plan or not plan.get("layers") or plan.get("method") not in LEVEL_METHODS:
        return None
    try:
        float(plan["target_psnr"])
        return {int(layer): float(value) for layer, value in dict(plan["layers"]).items()}
    except (KeyError, TypeError, ValueError):
        return None


def plan_findings(
    table: pd.DataFrame, plan: dict[str, Any] | None, anchor: str = SWEEP_ANCHORS["plan"]
) -> list[Finding]:
    """The plan's levels per layer and its PSNR target; the mean share of attention entries the chosen
    cells dropped in their layer (edited_sparsity); nothing without a plan."""
    levels = plan_levels(plan)
    if levels is None:
        return []
    method, target = str(plan["method"]), float(plan["target_psnr"])  # type: ignore[index]
    sparse = {layer: v for layer, v in levels.items() if (v > 0 if method == "bottom-k" else v < 1)}
    rule = f"mean PSNR against dense >= {target:g} dB with the layer sparsified alone"
    numbers: dict[str, Any] = {"method": method, "target_psnr": target, "layers": len(levels),
                               "sparse_layers": sorted(sparse)}  # fmt: skip
    if not sparse:
        text = f"No layer keeps {rule} at any swept level: the plan leaves all {len(levels)} layers dense."
        return [Finding(text, numbers, anchor)]
    low, high = min(sparse.values()), max(sparse.values())
    level = "k" if method == "bottom-k" else "p"
    range_ = f"{level} = {low:g}" if low == high else f"{level} from {low:g} to {high:g}"
    numbers.update(level_min=low, level_max=high)
    text = (
        f"The plan ({rule}) sparsifies {len(sparse)} of {len(levels)} layers ({method}, {range_}; "
        f"{layer_words(sorted(sparse))})"
        + (f" and leaves {len(levels) - len(sparse)} dense" if len(levels) > len(sparse) else "")
    )
    rows = _per_layer_rows(table)
    if len(rows) and "edited_sparsity" in rows:
        mask = np.zeros(len(rows), dtype=bool)
        for layer, value in sparse.items():
            mask |= (rows["layer"].to_numpy() == layer) & np.isclose(rows[level_column(rows)].to_numpy(float), value)
        chosen = rows.loc[mask, "edited_sparsity"].dropna()
        if len(chosen):
            dropped = float(chosen.mean())
            numbers["edited_sparsity"] = dropped
            text += f"; in those layers the swept cells dropped {dropped:.3f} of the attention entries on average"
    return [Finding(text + ".", numbers, anchor)]


def sweep_findings(table: pd.DataFrame, plan: dict[str, Any] | None) -> list[Finding]:
    """The findings of a sweep, in report order."""
    return [*sensitivity_findings(table), *plan_findings(table, plan)]


# -- sinks ---------------------------------------------------------------------------------------------
def model_name(result: SinkResult) -> str:
    """How a sink finding names its model: the directory's name and the kind."""
    return f"{Path(result.model).name} ({result.kind} model)"


def sink_share_findings(result: SinkResult, threshold: float, anchor: str) -> list[Finding]:
    """The share of heads with a sink (from the per-layer table), the layers with the most, and where
    the sinks sit (text tokens, the first token, video tokens, the video frame with most)."""
    layers = result.layers
    if layers.empty:
        return []
    name, heads, sink_heads = model_name(result), int(layers["heads"].sum()), int(layers["sink_heads"].sum())
    rule = f"a key receiving >= {threshold:g}x the median key's attention (floored at 1/N) in its layer and head"
    numbers: dict[str, Any] = {"heads": heads, "sink_heads": sink_heads, "share": sink_heads / heads if heads else 0.0}
    if sink_heads == 0:
        ratio = float(layers["max_ratio"].max())
        numbers["max_ratio"] = ratio
        text = f"{name}: none of its {heads} heads has a sink ({rule}); the largest ratio is {ratio:.1f}x."
        return [Finding(text, numbers, f"{anchor}-layers")]
    most, count = extreme(layers.set_index("layer")["sink_heads"], "max")
    numbers.update(most_layers=most, most_sink_heads=int(count))
    text = (
        f"{name}: {sink_heads} of {heads} heads ({sink_heads / heads:.0%}) have at least one sink ({rule}); "
        f"most in {layer_words(most)} ({int(count)} heads{' each' if len(most) > 1 else ''})."
    )
    findings = [Finding(text, numbers, f"{anchor}-layers")]
    total = int(layers["sinks"].sum())
    parts = {key: int(layers[f"{key}_sinks"].sum()) for key in ("text", "first_token", "video")}
    other = total - parts["text"] - parts["video"]
    text = f"on text tokens ({parts['first_token']} on the first token)" if parts["first_token"] else "on text tokens"
    where = places_words([(parts["text"], text), (parts["video"], "on video tokens"), (other, "elsewhere")])
    video = result.where[result.where["place"] == "video"] if "place" in result.where else result.where.iloc[0:0]
    frame_numbers: dict[str, Any] = {}
    if len(video) and parts["video"]:
        frames, most_video = extreme(video.groupby("frame")["sinks"].sum(), "max")
        frame_numbers = {"frames": [int(f) for f in frames], "frame_sinks": int(most_video)}
        where += f"; the video sinks are most often in frame {span(frames)} ({int(most_video)})"
    numbers = {"sinks": total, **parts, "other": other, **frame_numbers}
    findings.append(Finding(f"{name}: where its {total} sinks sit: {where}.", numbers, f"{anchor}-where"))
    return findings


def sink_consistency_findings(result: SinkResult, anchor: str) -> list[Finding]:
    """Mean Jaccard overlap (over layers) of each head's sink set between steps and between prompts."""
    table = result.consistency
    pieces, numbers = [], {}
    between = "texts" if result.kind == "text" else "prompts at the same step"
    for column, words in (("steps_overlap", "denoising steps"), ("prompts_overlap", between)):
        values = table[column].dropna() if column in table else pd.Series(dtype=float)
        if len(values):
            numbers[column] = float(values.mean())
            pieces.append(f"{numbers[column]:.3f} between {words}")
    if not pieces:
        return []
    text = f"{model_name(result)}: each head's sink set overlaps {' and '.join(pieces)} (mean Jaccard over layers)."
    return [Finding(text, numbers, anchor)]


def ablation_findings(result: SinkResult, anchor: str) -> list[Finding]:
    """Per ablation path: the sinks' effect against as many random keys (mean over the table's rows)."""
    table = result.ablation
    if table.empty or not {"path", "keys"} <= set(table.columns):
        return []
    metric = "psnr" if "psnr" in table else "loss" if "loss" in table else "output_change"
    if metric not in table:
        return []
    words = {"psnr": "PSNR against the unchanged video", "loss": "next-token loss",
             "output_change": "relative output change"}[metric]  # fmt: skip
    findings = []
    for path in sorted(table["path"].unique()):
        rows = table[table["path"] == path]
        sinks, random = rows[rows["keys"] == "sinks"], rows[rows["keys"] == "random"]
        if sinks.empty or random.empty:
            continue
        a, b = float(sinks[metric].mean()), float(random[metric].mean())
        worse = a < b if metric == "psnr" else a > b
        effect = "the same as" if a == b else "more than" if worse else "less than"
        fmt = db if metric == "psnr" else (lambda v: f"{v:.3f}")
        layers = "; ".join(sorted(set(map(str, rows["layers"])))) if "layers" in rows else ""
        where = (f" in layers {layers}" if "," in layers else f" in layer {layers}") if layers else ""
        action = PATH_WORDS.get(path, "Ablating {} (" + str(path) + ")").replace("{}", "the sinks", 1)
        detail = f"{words}: {fmt(a)} with the sinks, {fmt(b)} with random keys"
        numbers: dict[str, Any] = {"path": path, "metric": metric, "sinks": a, "random": b}
        if "keys_per_head" in rows:
            ka, kb = float(sinks["keys_per_head"].mean()), float(random["keys_per_head"].mean())
            numbers.update(sinks_keys_per_head=ka, random_keys_per_head=kb)
            detail += f"; keys removed per head: {ka:.2f} sinks, {kb:.2f} random"
        if metric == "loss" and "loss_dense" in rows:
            numbers["loss_dense"] = float(rows["loss_dense"].mean())
            detail += f"; unablated loss {numbers['loss_dense']:.3f}"
        text = f"{model_name(result)}: {action}{where} changes the output {effect} as many random keys ({detail})"
        findings.append(Finding(text + ".", numbers, f"{anchor}-ablation"))
    return findings


def sink_findings(result: SinkResult, threshold: float, anchor: str = "model-0") -> list[Finding]:
    """The findings of one model of a sinks run; ``anchor`` is its section's id (sub-sections add
    -layers, -where, -ablation)."""
    return [
        *sink_share_findings(result, threshold, anchor),
        *sink_consistency_findings(result, "consistency"),
        *ablation_findings(result, anchor),
    ]


# -- edit-sweep and text ablation ------------------------------------------------------------------------
def edit_sweep_findings(table: pd.DataFrame, anchor: str = EDIT_SWEEP_ANCHOR) -> list[Finding]:
    """The layer windows whose transfer keeps most and least of the source's layout (SSIM to the source),
    against the plain target (row 'none'); the track distance when the table has it."""
    if table.empty or "ssim_to_source" not in table:
        return []
    windows = table[table["layers"].astype(str) != "none"].set_index("layers")
    plain = table[table["layers"].astype(str) == "none"]
    if windows.empty:
        return []
    best, high = extreme(windows["ssim_to_source"].astype(float), "max")
    worst, low = extreme(windows["ssim_to_source"].astype(float), "min")
    numbers: dict[str, Any] = {"best": best, "best_ssim": high, "worst": worst, "worst_ssim": low,
                               "windows": len(windows)}  # fmt: skip
    text = f"Transferring layers {' / '.join(map(str, best))} keeps most of the source's layout"
    text += f" (SSIM to source {high:.3f})"
    if len(windows) > 1 and high != low:
        text += f"; layers {' / '.join(map(str, worst))} keep least ({low:.3f})"
    if len(plain):
        base = float(plain["ssim_to_source"].iloc[0])
        above = int((windows["ssim_to_source"] > base).sum())
        numbers.update(plain_ssim=base, above_plain=above)
        text += f"; {above} of {len(windows)} windows score above the plain target ({base:.3f})"
    findings = [Finding(text + ".", numbers, anchor)]
    if "track_distance_px" in windows and windows["track_distance_px"].notna().any():
        closest, distance = extreme(windows["track_distance_px"].astype(float), "min")
        sentence = f"The shape's track stays closest to the source's with layers {' / '.join(map(str, closest))}"
        sentence += f" ({distance:.1f} px on average"
        numbers = {"closest": closest, "track_distance_px": distance}
        if len(plain) and "track_distance_px" in plain and plain["track_distance_px"].notna().any():
            numbers["plain_track_distance_px"] = float(plain["track_distance_px"].iloc[0])
            sentence += f", against {numbers['plain_track_distance_px']:.1f} px for the plain target"
        findings.append(Finding(sentence + ").", numbers, anchor))
    return findings


def text_ablation_findings(table: pd.DataFrame, anchor: str = TEXT_ABLATION_ANCHOR) -> list[Finding]:
    """Per method: how close the first-token-only videos stay to the full-prompt ones (mean SSIM and
    PSNR over prompts, the prompt that changes most) and, for shapes models, how often the colour is kept."""
    if table.empty or not {"method", "ssim", "psnr"} <= set(table.columns):
        return []
    findings = []
    for method in sorted(table["method"].astype(str).unique()):
        rows = table[table["method"].astype(str) == method]
        ssim, psnr = float(rows["ssim"].mean()), float(rows["psnr"].mean())
        numbers: dict[str, Any] = {"method": method, "prompts": len(rows), "ssim": ssim, "psnr": psnr}
        text = (
            f"With only the first text token ({method}), the videos keep a mean SSIM of {ssim:.3f} "
            f"(PSNR {db(psnr)}) to the full-prompt ones over {_plural(len(rows), 'prompt')}"
        )
        if len(rows) > 1:
            lowest, value = extreme(rows.reset_index(drop=True)["ssim"].astype(float), "min")
            prompt = str(rows["prompt"].iloc[lowest[0]]) if "prompt" in rows else ""
            numbers.update(lowest_prompt=prompt, lowest_ssim=value)
            text += f"; lowest for '{prompt}' ({value:.3f})"
        if {"colour_full", "colour_ablated"} <= set(rows.columns):
            known = rows.dropna(subset=["colour_full", "colour_ablated"])
            known = known[(known["colour_full"].astype(str) != "") & (known["colour_ablated"].astype(str) != "")]
            if len(known):
                kept = int((known["colour_full"] == known["colour_ablated"]).sum())
                numbers.update(colour_kept=kept, colour_read=len(known))
                text += f"; the shape keeps its colour in {kept} of {len(known)} videos where both colours were read"
        findings.append(Finding(text + ".", numbers, anchor))
    return findings
