"""Findings in words (issue 18, item 2): every sentence's numbers are the table's, statements the tables
cannot support are absent, thresholds are quoted; the reports show the list at the top, escaped, with
links to the sections that exist.

The tables are built by hand with known answers (odd sizes, ties) and, where an analysis function makes
the table a finding reads, compared with that function's output.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vditscope.analyses.findings import (
    Finding,
    ablation_findings,
    analyze_findings,
    edit_sweep_findings,
    head_findings,
    layer_words,
    plan_findings,
    sensitivity_findings,
    similarity_findings,
    sink_findings,
    span,
    structure_sink_findings,
    sweep_findings,
    text_ablation_findings,
    text_findings,
)
from vditscope.analyses.results import SinkResult
from vditscope.analyses.sink_tables import layer_summary, where_table
from vditscope.analyses.structure import (
    SINK_MASS,
    SINK_RATIO,
    SPATIAL_MASS,
    SPATIAL_OVER_TEMPORAL,
    TEMPORAL_MASS,
    Structure,
    analyze_structure,
    first_token_share,
)
from vditscope.analyses.sweep_tables import sensitivity_table, sparsity_plan

SIMILARITY_COLUMNS = ["layer", "axis", "mean_similarity", "groups", "map"]


def similarity(axis: str, values: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"layer": i, "axis": axis, "mean_similarity": v, "groups": 2, "map": "token_map"}
            for i, v in enumerate(values)
        ],
        columns=SIMILARITY_COLUMNS,
    )


# -- helpers ---------------------------------------------------------------------------------------
def test_span_and_layer_words() -> None:
    assert span([5, 1, 2]) == "1, 2 and 5"
    assert span([0, 1, 2, 3, 7]) == "0-3 and 7"
    assert span([4]) == "4" and span([]) == ""
    assert layer_words([3]) == "layer 3" and layer_words([1, 3]) == "layers 1 and 3"
    assert layer_words([0, 1, 2]) == "layers 0-2"


def test_a_finding_anchor_is_a_plain_id() -> None:
    assert Finding("x", {}, "model-0-where").anchor == "model-0-where"
    for bad in ("", "x' onclick='y", "#heads", "Heads"):
        with pytest.raises(ValueError, match="anchor"):
            Finding("x", {}, bad)


# -- analyze ---------------------------------------------------------------------------------------
def test_similarity_names_the_most_and_least_alike_layers_with_ties() -> None:
    values = [0.3, 0.9, 0.5, 0.9, 0.1]
    table = pd.concat([similarity("prompts", values), similarity("steps", [0.7])], ignore_index=True)
    (finding,) = similarity_findings(table)  # steps: one layer, no most/least
    assert finding.numbers == {"axis": "prompts", "most_layers": [1, 3], "most_r": 0.9, "least_layers": [4],
                               "least_r": 0.1, "mean_r": pytest.approx(np.mean(values)), "layers": 5}  # fmt: skip
    assert "layers 1 and 3 (mean Pearson r 0.900)" in finding.text
    assert "layer 4 (r 0.100)" in finding.text and "mean over 5 layers is 0.540" in finding.text
    assert finding.text.startswith("Across prompts, the token maps") and finding.anchor == "similarity"


def test_similarity_absent_without_support() -> None:
    assert similarity_findings(Structure().similarity_table()) == []
    assert similarity_findings(similarity("prompts", [np.nan, 0.4, np.nan])) == []  # one layer with a value
    assert similarity_findings(similarity("prompts", [0.4, 0.4, 0.4])) == []  # nothing is most alike
    (finding,) = similarity_findings(similarity("prompts", [np.nan, 0.4, 0.2]))
    assert finding.numbers["layers"] == 2 and finding.numbers["least_layers"] == [2]


def _one_prompt_maps() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        f"token_map.p0.s0.step{step}.self.layer{layer}": torch.rand(2, 5, 5, generator=gen)
        for layer in range(3)
        for step in (0, 4)
    }


def test_one_prompt_gives_no_statement_across_prompts() -> None:
    structure = analyze_structure(pd.DataFrame(columns=["kind", "branch"]), _one_prompt_maps())
    findings = similarity_findings(structure.similarity_table())
    assert [f.numbers["axis"] for f in findings] == ["steps"]
    table = structure.similarity_table()
    steps = table[table["axis"] == "steps"].set_index("layer")["mean_similarity"]
    assert findings[0].numbers["most_r"] == steps.max() and findings[0].numbers["least_r"] == steps.min()
    assert findings[0].numbers["most_layers"] == [int(steps.idxmax())]


def heads_table(classes: dict[tuple[int, int], str]) -> pd.DataFrame:
    return pd.DataFrame([{"layer": layer, "head": head, "class": c} for (layer, head), c in classes.items()])


def test_head_classes_counted_with_the_rule_quoted() -> None:
    classes = {(0, 0): "spatial", (0, 1): "spatial", (1, 0): "temporal", (1, 1): "spatial", (2, 0): "temporal",
               (2, 1): "temporal", (2, 2): "sink"}  # fmt: skip
    findings = head_findings(heads_table(classes))
    counts, *per_class = findings
    assert counts.numbers == {"heads": 7, "spatial": 3, "temporal": 3, "sink": 1}
    assert counts.text.startswith("Of 7 heads, 3 spatial, 3 temporal, 1 sink-dominated")
    for threshold in (f">= {SINK_MASS:.0%}", f">= {SPATIAL_MASS:.0%}", f">= {SPATIAL_OVER_TEMPORAL:g}x",
                      f">= {TEMPORAL_MASS:.0%}"):  # fmt: skip
        assert threshold in counts.text
    by_class = {f.numbers["class"]: f for f in per_class}
    assert by_class["spatial"].numbers == {"class": "spatial", "layers": [0], "count": 2}
    assert by_class["temporal"].numbers == {"class": "temporal", "layers": [2], "count": 2}
    assert "layer 2 (1)" in by_class["sink"].text
    tie = head_findings(heads_table({(0, 0): "spatial", (1, 0): "spatial", (1, 1): "mixed"}))
    assert tie[1].numbers == {"class": "spatial", "layers": [0, 1], "count": 1}
    assert "layers 0 and 1 (1 each)" in tie[1].text and "1 mixed" in tie[0].text
    (unknown,) = head_findings(heads_table({(0, 0): "unknown", (0, 1): "unknown", (1, 0): "unknown"}))
    assert unknown.numbers == {"heads": 3, "unknown": 3} and "3 unclassified (no video layout)" in unknown.text
    assert head_findings(pd.DataFrame(columns=["layer", "head", "class"])) == []


def text_table(shares: dict[int, list[float]], kind: str = "cross") -> pd.DataFrame:
    rows = [
        {"layer": layer, "kind": kind, "token_index": i, "token": f"t{i}", "mass": s, "share": s}
        for layer, values in shares.items()
        for i, s in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=["layer", "kind", "token_index", "token", "mass", "share"])


def test_text_attention_first_token_share_and_top_token() -> None:
    text = text_table({0: [0.5, 0.2, 0.3], 1: [0.2, 0.1, 0.7], 2: [0.5, 0.1, 0.4]})
    first, top = text_findings(text)
    shares = first_token_share(text).set_index("layer")["first_token_share"]
    assert first.numbers["mean_share"] == pytest.approx(shares.mean()) == pytest.approx(0.4)
    assert first.numbers["high_layers"] == [0, 2] and first.numbers["low_layers"] == [1]
    assert first.numbers["uniform"] == pytest.approx(1 / 3) and first.numbers["text_tokens"] == 3
    assert "0.400 of their text attention (mean over 3 layers; uniform over its 3 text tokens would give 0.333)" in (
        first.text
    )
    assert "most in layers 0 and 2 (0.500), least in layer 1 (0.200)" in first.text
    assert top.numbers == {"kind": "cross", "tokens": [2], "share": pytest.approx(1.4 / 3)}
    assert "token 2 't2' (0.467)" in top.text and top.anchor == "text-attention"
    only_first = text_findings(text_table({0: [0.8, 0.2]}, kind="self"))
    assert len(only_first) == 1 and "joint self-attention" in only_first[0].text  # top token is the first
    assert "most in" not in only_first[0].text  # one layer: no highest and lowest
    flat, tie = text_findings(text_table({0: [0.5, 0.5], 1: [0.5, 0.5]}))
    assert "most in" not in flat.text and "high_layers" not in flat.numbers  # equal in every layer
    assert tie.numbers["tokens"] == [0, 1] and "tokens 0 't0', 1 't1' (0.500 each)" in tie.text
    assert text_findings(text_table({})) == []


def sinks_table(rows: list[tuple[int, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"layer": layer, "head": head, "key": 0, "where": where, "consistency": 1.0, "sink_ratio": ratio,
          "sink_mass": 0.1, "sink": ratio >= SINK_RATIO} for layer, head, where, ratio in rows]
    )  # fmt: skip


def test_structure_sinks_count_place_and_strongest() -> None:
    table = sinks_table([(0, 0, "text 0", 40.0), (0, 1, "video f0 y0 x0", 3.0), (1, 0, "video f1 y1 x0", 12.0),
                         (1, 1, "video f1 y1 x0", 2.0), (2, 0, "video f0 y0 x1", 9.99)])  # fmt: skip
    heads, place = structure_sink_findings(table)
    assert heads.numbers == {"heads": 5, "sink_heads": 2, "layers": [0, 1], "layer": 0, "head": 0, "ratio": 40.0}
    assert f">= {SINK_RATIO:g}x the median key's mass" in heads.text
    assert heads.text.startswith("2 of 5 heads have a sink") and "layer 0 head 0 at text 0 (40.0x)" in heads.text
    assert place.numbers == {"text": 1, "video": 1, "sink_heads": 2}
    assert place.text == "Where the 2 sink keys sit: 1 on text tokens and 1 on video tokens."
    none = structure_sink_findings(sinks_table([(0, 0, "", 3.0), (1, 0, "", 7.5), (1, 1, "", 1.0)]))
    assert len(none) == 1 and none[0].numbers["sink_heads"] == 0 and none[0].numbers["ratio"] == 7.5
    assert none[0].text.startswith("None of the 3 heads has a sink") and "(layer 1 head 0)" in none[0].text
    assert structure_sink_findings(pd.DataFrame()) == []


def test_analyze_findings_in_report_order() -> None:
    structure = Structure(
        heads=heads_table({(0, 0): "spatial", (1, 0): "temporal"}),
        text=text_table({0: [0.5, 0.5], 1: [0.9, 0.1]}),
        sinks=sinks_table([(0, 0, "", 11.0)]),
    )
    anchors = [f.anchor for f in analyze_findings(structure)]
    assert anchors == sorted(anchors, key=["similarity", "heads", "text-attention", "sinks"].index)
    assert "similarity" not in anchors and {"heads", "text-attention", "sinks"} <= set(anchors)


# -- sweep -----------------------------------------------------------------------------------------
def sweep_table(psnr: dict[tuple[int, float], list[float]], method: str = "bottom-k") -> pd.DataFrame:
    """Per-layer rows (one per prompt) plus a global row and a dense row that the findings must ignore."""
    level = "k" if method == "bottom-k" else "p"
    rows = []
    for (layer, value), values in psnr.items():
        for prompt, v in enumerate(values):
            rows.append({"scope": "per-layer", "method": method, "layer": layer, "k": np.nan, "p": np.nan,
                         level: value, "prompt_index": prompt, "psnr": v,
                         "edited_sparsity": value / 2 + prompt / 10})  # fmt: skip
    rows.append({"scope": "global", "method": method, "layer": -1, "k": np.nan, "p": np.nan, level: 0.9,
                 "prompt_index": 0, "psnr": 1.0, "edited_sparsity": 0.9})  # fmt: skip
    rows.append({"scope": "per-layer", "method": method, "layer": -1, "k": np.nan, "p": np.nan, level: 0.9,
                 "prompt_index": 0, "psnr": 2.0, "edited_sparsity": 0.9})  # fmt: skip
    return pd.DataFrame(rows)


SWEEP = {(0, 0.5): [40.0, 38.0], (0, 0.9): [20.0, 22.0], (1, 0.5): [45.0, 45.0], (1, 0.9): [33.0, 35.0],
         (2, 0.5): [36.0, 30.0], (2, 0.9): [21.0, 21.0]}  # fmt: skip


def test_sensitivity_at_the_sparsest_level_with_ties() -> None:
    table = sweep_table(SWEEP)
    (finding,) = sensitivity_findings(table)
    column = sensitivity_table(table[table["layer"] >= 0]).set_index("layer")["psnr@k=0.9"]
    assert finding.numbers["most_psnr"] == column.min() == 21.0 and finding.numbers["most_layers"] == [0, 2]
    assert finding.numbers["least_psnr"] == column.max() == 34.0 and finding.numbers["least_layers"] == [1]
    assert finding.numbers["level"] == 0.9 and finding.numbers["layers"] == 3
    assert "(bottom-k, k = 0.9)" in finding.text and "layers 0 and 2 are the most sensitive" in finding.text
    assert "(mean PSNR against dense 21.0 dB)" in finding.text and "layer 1 the least (34.0 dB)" in finding.text


def test_sensitivity_top_p_uses_the_smallest_p_and_states_identical_frames() -> None:
    table = sweep_table({(0, 0.5): [np.inf], (0, 0.9): [30.0], (1, 0.5): [25.0], (1, 0.9): [np.inf]}, "top-p")
    (finding,) = sensitivity_findings(table)
    assert finding.numbers["level"] == 0.5 and finding.numbers["most_layers"] == [1]
    assert finding.numbers["least_psnr"] == np.inf and "inf dB (identical frames)" in finding.text


def test_sensitivity_absent_without_support() -> None:
    assert sensitivity_findings(sweep_table({(0, 0.5): [20.0], (0, 0.9): [10.0]})) == []  # one layer
    assert sensitivity_findings(sweep_table({(0, 0.9): [20.0], (1, 0.9): [20.0]})) == []  # all equal
    assert sensitivity_findings(sweep_table(SWEEP).assign(scope="temperature")) == []
    assert sensitivity_findings(pd.DataFrame()) == []


def test_plan_sparsity_and_target_from_the_sweep_plan() -> None:
    table = sweep_table(SWEEP)
    plan = sparsity_plan(table, 30.0)
    assert plan["layers"] == {"0": 0.5, "1": 0.9, "2": 0.5}
    (finding,) = plan_findings(table, plan)
    assert finding.numbers["target_psnr"] == 30.0 and finding.numbers["sparse_layers"] == [0, 1, 2]
    assert (finding.numbers["level_min"], finding.numbers["level_max"]) == (0.5, 0.9)
    rows = table[(table["layer"] >= 0)]
    chosen = rows[((rows["layer"] == 1) & (rows["k"] == 0.9)) | ((rows["layer"] != 1) & (rows["k"] == 0.5))]
    assert finding.numbers["edited_sparsity"] == pytest.approx(chosen["edited_sparsity"].mean())
    assert "mean PSNR against dense >= 30 dB" in finding.text and "k from 0.5 to 0.9" in finding.text
    assert f"dropped {chosen['edited_sparsity'].mean():.3f} of the attention entries" in finding.text
    dense = plan_findings(table, sparsity_plan(table, 99.0))
    assert dense[0].numbers["sparse_layers"] == [] and "leaves all 3 layers dense" in dense[0].text
    assert ">= 99 dB" in dense[0].text


def test_plan_absent_or_unreadable_gives_nothing() -> None:
    table = sweep_table(SWEEP)
    assert plan_findings(table, {}) == [] and plan_findings(table, None) == []
    assert plan_findings(table, {"target_psnr": 25.0, "rule": "x", "layers": {"<b>": 0.5}}) == []
    assert plan_findings(table, {"method": "bottom-k", "target_psnr": 25.0, "layers": {"x": 0.5}}) == []
    assert [f.anchor for f in sweep_findings(table, sparsity_plan(table, 30.0))] == ["sensitivity", "plan"]


# -- sinks -----------------------------------------------------------------------------------------
def sink_result(kind: str = "video", ablation: pd.DataFrame | None = None, sinks: bool = True) -> SinkResult:
    layers = pd.DataFrame(
        [{"layer": 0, "heads": 4, "sink_heads": 3 if sinks else 0, "sinks": 4 if sinks else 0, "max_ratio": 50.0,
          "text_sinks": 2 if sinks else 0, "first_token_sinks": 1 if sinks else 0, "video_sinks": 2 if sinks else 0},
         {"layer": 1, "heads": 4, "sink_heads": 1 if sinks else 0, "sinks": 1 if sinks else 0, "max_ratio": 8.0,
          "text_sinks": 0, "first_token_sinks": 0, "video_sinks": 1 if sinks else 0},
         {"layer": 2, "heads": 4, "sink_heads": 3 if sinks else 0, "sinks": 3 if sinks else 0, "max_ratio": 9.0,
          "text_sinks": 0, "first_token_sinks": 0, "video_sinks": 2 if sinks else 0}]
    )  # fmt: skip
    where = pd.DataFrame(
        [{"place": "video", "token_kind": "video", "frame": 2, "sinks": 2},
         {"place": "text", "token_kind": "first", "frame": -1, "sinks": 1},
         {"place": "video", "token_kind": "video", "frame": 0, "sinks": 3}]
    )  # fmt: skip
    consistency = pd.DataFrame({"layer": [0, 1, 2], "steps_overlap": [0.5, np.nan, 1.0],
                                "prompts_overlap": [np.nan, np.nan, np.nan]})  # fmt: skip
    return SinkResult(kind, "/models/tiny-wan", "wan", pd.DataFrame(), layers, where, consistency,
                      pd.DataFrame() if ablation is None else ablation)  # fmt: skip


def test_sink_share_place_and_consistency() -> None:
    share, place, overlap = sink_findings(sink_result(), 5.0, "model-0")
    assert share.numbers == {"heads": 12, "sink_heads": 7, "share": 7 / 12, "most_layers": [0, 2],
                             "most_sink_heads": 3}  # fmt: skip
    assert share.text.startswith("tiny-wan (video model): 7 of 12 heads (58%) have at least one sink")
    assert ">= 5x the median key's attention" in share.text and "layers 0 and 2 (3 heads each)" in share.text
    assert share.anchor == "model-0-layers" and place.anchor == "model-0-where"
    assert place.numbers == {"sinks": 8, "text": 2, "first_token": 1, "video": 5, "other": 1, "frames": [0],
                             "frame_sinks": 3}  # fmt: skip
    assert "its 8 sinks sit: 2 on text tokens (1 on the first token), 5 on video tokens and 1 elsewhere" in place.text
    assert "most often in frame 0 (3)" in place.text
    assert overlap.numbers == {"steps_overlap": 0.75} and "0.750 between denoising steps" in overlap.text
    assert "prompts" not in overlap.text  # all nan: no statement


def test_no_sinks_is_stated_with_the_largest_ratio() -> None:
    (finding,) = [f for f in sink_findings(sink_result(sinks=False), 10.0, "model-1") if "heads" in f.numbers]
    assert finding.numbers["sink_heads"] == 0 and finding.numbers["max_ratio"] == 50.0
    assert "none of its 12 heads has a sink" in finding.text and ">= 10x" in finding.text


def test_ablation_sinks_against_random_keys() -> None:
    ablation = pd.DataFrame(
        [{"path": "mask", "keys": "sinks", "layers": "0,2", "psnr": 18.0, "keys_per_head": 5.79},
         {"path": "mask", "keys": "random", "layers": "0,2", "psnr": 35.0, "keys_per_head": 4.53},
         {"path": "zero-values", "keys": "sinks", "layers": "0,2", "psnr": 40.0, "keys_per_head": 2.0},
         {"path": "zero-values", "keys": "random", "layers": "0,2", "psnr": 30.0, "keys_per_head": 2.0}]
    )  # fmt: skip
    mask, zero = ablation_findings(sink_result(ablation=ablation), "model-0")
    assert mask.numbers == {"path": "mask", "metric": "psnr", "sinks": 18.0, "random": 35.0,
                            "sinks_keys_per_head": 5.79, "random_keys_per_head": 4.53}  # fmt: skip
    assert "in layers 0,2 changes the output more than as many random keys" in mask.text
    assert "18.0 dB with the sinks, 35.0 dB with random keys" in mask.text and "5.79 sinks, 4.53 random" in mask.text
    assert "less than" in zero.text and zero.anchor == "model-0-ablation"
    lm = pd.DataFrame([{"path": "mask", "keys": "sinks", "layers": "1", "loss": 4.0, "loss_dense": 3.0},
                       {"path": "mask", "keys": "random", "layers": "1", "loss": 3.1, "loss_dense": 3.0}])  # fmt: skip
    (text,) = ablation_findings(sink_result("text", lm), "model-1")
    assert text.numbers["metric"] == "loss" and "more than" in text.text and "unablated loss 3.000" in text.text
    assert ablation_findings(sink_result(), "model-0") == []
    assert ablation_findings(sink_result(ablation=ablation[ablation["keys"] == "sinks"]), "model-0") == []


# -- edit-sweep and text ablation ------------------------------------------------------------------
def test_edit_sweep_windows_against_the_plain_target() -> None:
    table = pd.DataFrame(
        [{"layers": "none", "first_layer": -1, "ssim_to_source": 0.5, "psnr_to_source": 20.0, "track_distance_px": 6.0},
         {"layers": "0", "first_layer": 0, "ssim_to_source": 0.8, "psnr_to_source": 25.0, "track_distance_px": 2.0},
         {"layers": "1", "first_layer": 1, "ssim_to_source": 0.4, "psnr_to_source": 19.0, "track_distance_px": 7.0},
         {"layers": "2", "first_layer": 2, "ssim_to_source": 0.8, "psnr_to_source": 24.0, "track_distance_px": 3.0}]
    )  # fmt: skip
    layout, track = edit_sweep_findings(table)
    assert layout.numbers == {"best": ["0", "2"], "best_ssim": 0.8, "worst": ["1"], "worst_ssim": 0.4, "windows": 3,
                              "plain_ssim": 0.5, "above_plain": 2}  # fmt: skip
    assert "layers 0 / 2 keeps most" in layout.text and "2 of 3 windows score above the plain target (0.500)" in (
        layout.text
    )
    assert track.numbers == {"closest": ["0"], "track_distance_px": 2.0, "plain_track_distance_px": 6.0}
    assert edit_sweep_findings(table[table["layers"] == "none"]) == [] and edit_sweep_findings(pd.DataFrame()) == []
    (no_track,) = edit_sweep_findings(table.drop(columns=["track_distance_px"]))
    assert no_track.numbers == layout.numbers


def test_text_ablation_per_method() -> None:
    table = pd.DataFrame(
        [{"prompt": f"prompt {p}", "method": m, "ssim": s, "psnr": 20.0 + p, "frame_mse": 0.1,
          "colour_full": "red", "colour_ablated": c}
         for (p, m, s, c) in [(0, "mask", 0.9, "red"), (1, "mask", 0.6, "blue"), (2, "mask", 0.75, None),
                              (0, "truncate", 0.5, "red"), (1, "truncate", 0.5, "red"), (2, "truncate", 0.8, "red")]]
    )  # fmt: skip
    mask, truncate = text_ablation_findings(table)
    assert mask.numbers == {"method": "mask", "prompts": 3, "ssim": pytest.approx(0.75),
                            "psnr": pytest.approx(21.0), "lowest_prompt": "prompt 1", "lowest_ssim": 0.6,
                            "colour_kept": 1, "colour_read": 2}  # fmt: skip
    assert "mean SSIM of 0.750 (PSNR 21.0 dB)" in mask.text and "in 1 of 2 videos where both colours" in mask.text
    assert truncate.numbers["lowest_prompt"] == "prompt 0" and truncate.numbers["colour_kept"] == 3  # tie: first
    (one,) = text_ablation_findings(table.iloc[:1].drop(columns=["colour_full", "colour_ablated"]))
    assert "lowest" not in one.text and "colour" not in one.text and "over 1 prompt" in one.text
    assert text_ablation_findings(pd.DataFrame()) == []


# -- the reports -----------------------------------------------------------------------------------
@pytest.fixture
def escaping(monkeypatch: pytest.MonkeyPatch):
    """The escaping checks of the report tests, with the findings list's tags allowed."""
    from tests.report import test_report_escaping as module

    monkeypatch.setattr(module, "ALLOWED_TAGS", module.ALLOWED_TAGS | {"ul", "li", "a"})
    return module


def links_and_ids(html: str) -> tuple[list[str], set[str]]:
    return re.findall(r"href='#([^']*)'", html), set(re.findall(r"id='([^']*)'", html))


def analyze_report(tmp_path: Path, hostile) -> tuple[str, Structure]:
    from vditscope.report.html import write_report

    gen = torch.Generator().manual_seed(0)
    maps = {f"token_map.p{p}.s0.step{s}.self.layer{layer}": torch.rand(2, 4, 4, generator=gen)
            for p, s, layer in itertools.product(range(2), range(2), range(3))}  # fmt: skip
    maps |= {f"text_received.p0.s0.cross.layer{layer}": torch.tensor([[0.1 + layer / 20, 0.2, 0.7 - layer / 20]] * 2)
             for layer in range(3)}  # fmt: skip
    stats = pd.DataFrame(
        [{"layer": layer, "kind": "self", "branch": "cond", "step": 0, "head": head, "generation": 0, "entropy": 1.0,
          "same_frame_mass": 0.6, "same_position_mass": 0.1 * head, "text_mass": 0.0, "top10": 0.5,
          "sink_mass": 0.1, "sink_ratio": 4.0 + 5 * layer, "sink_index": 0}
         for layer, head in itertools.product(range(3), range(3))]
    )  # fmt: skip
    layout = {"grid": [2, 2, 2], "text_tokens": 0, "text_position": None}
    structure = analyze_structure(stats, maps, layout, {0: [hostile(f"token{i}") for i in range(3)]})
    run = {"model": hostile("model"), "family": "wan", "layers": 3, "heads": 3, "layout": layout,
           "prompts": [hostile("prompt0"), hostile("prompt1")], "seeds": [0], "steps": 2, "captured_steps": [0, 1],
           "seconds": 1.0}  # fmt: skip
    path = tmp_path / "report.html"
    write_report(path, run, stats, maps, {}, structure)
    return path.read_text(encoding="utf-8"), structure


def test_analyze_report_opens_with_the_findings_escaped(tmp_path: Path, escaping) -> None:
    html, structure = analyze_report(tmp_path, escaping.hostile)
    findings = analyze_findings(structure)
    assert len(findings) >= 4 and any("token2" in f.text for f in findings)  # a hostile token reaches a sentence
    top = html.index("<ul class='findings'>")
    assert html.index("<h2>Overview</h2>") < top < html.index("<h2>Per-layer summary</h2>")
    listed = html[top : html.index("</ul>", top)]
    assert listed.count("<li>") == len(findings)
    assert links_and_ids(listed)[0] == [f.anchor for f in findings]
    escaping.check_page(tmp_path / "report.html", ["model", "prompt0", "prompt1", "token2"])


def test_analyze_report_links_resolve(tmp_path: Path, escaping) -> None:
    links, ids = links_and_ids(analyze_report(tmp_path, escaping.hostile)[0])
    assert links and set(links) <= ids


def test_sweep_report_findings_link_to_its_sections(tmp_path: Path, escaping) -> None:
    from vditscope.report.sweep_html import write_sweep_report

    table = sweep_table(SWEEP).assign(mode="sparsity", mask="", layers="x", temperature=1.0, prompt="p", seed=0,
                                      ssim=0.9, latent_mse=0.1, lpips=np.nan, sparsity=0.1, mass_dropped=0.1,
                                      model_mass_dropped=0.1)  # fmt: skip
    meta = {"model": escaping.hostile("model"), "family": "wan", "mode": "sparsity", "scope": "per-layer",
            "method": "bottom-k", "levels": [0.5, 0.9], "temperatures": [1.0], "steps": None, "branches": None,
            "prompts": [escaping.hostile("prompt")], "seeds": [0], "cells": len(table), "cells_reused": 0}  # fmt: skip
    path = tmp_path / "report.html"
    write_sweep_report(path, meta, table, sparsity_plan(table, 30.0))
    html = path.read_text(encoding="utf-8")
    links, ids = links_and_ids(html)
    assert links == ["sensitivity", "plan"] and set(links) <= ids
    assert html.index("<ul class='findings'>") < html.index("id='quality'")
    escaping.check_page(path, ["model", "prompt"])


def test_sinks_report_findings_link_to_its_sections(tmp_path: Path, escaping) -> None:
    from vditscope.report.sinks_html import write_sinks_report

    ablation = pd.DataFrame([{"path": "mask", "keys": k, "layers": "0", "psnr": v} for k, v in
                             (("sinks", 10.0), ("random", 30.0))])  # fmt: skip
    result = sink_result(ablation=ablation)
    keys = pd.DataFrame(
        [{"layer": layer, "head": head, "rank": 0, "token_index": 3, "token": escaping.hostile("token"),
          "place": "video", "token_kind": "video", "frame": 0, "row": 0, "col": 0, "received": 0.5,
          "received_visible": 0.5, "ratio": 20.0 * (head + 1), "ratio_visible": 20.0, "sink": head > 0,
          "key_norm": 1.0, "value_norm": 1.0, "key_norm_ratio": 1.0, "value_norm_ratio": 0.5}
         for layer, head in itertools.product(range(3), range(4))]
    )  # fmt: skip
    result.keys, result.model = keys, f"/models/{escaping.hostile('model')}"
    result.layers, result.where = layer_summary(keys, 4), where_table(keys)
    path = tmp_path / "report.html"
    write_sinks_report(path, {"threshold": 5.0}, result, None)
    html = path.read_text(encoding="utf-8")
    links, ids = links_and_ids(html)
    assert links == ["model-0-layers", "model-0-where", "consistency", "model-0-ablation"] and set(links) <= ids
    assert html.index("<ul class='findings'>") < html.index("id='model-0'")
    escaping.check_page(path, ["model", "token"])
