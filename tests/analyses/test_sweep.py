"""Interventions (bottom-k, top-p, temperature through hooks) and the sweeps built on them: the
cells a sweep plans, its table, resuming after a kill, plans applied by generate and analyze,
and one clear line for bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vditscope.adapters.loading import load_pipeline
from vditscope.analyses.sweep import SweepRequest, plan_cells, sparsity_plan
from vditscope.capture import capture
from vditscope.capture.intervene import AttentionEdit, intervene
from vditscope.errors import VditscopeError

SMALL = {"num_frames": 9, "num_inference_steps": 3, "height": 32, "width": 64, "guidance_scale": 4.0}
SMALL_ARGS = ["--num-frames", "9", "--steps", "3", "--height", "32", "--width", "32"]
PROMPT = "a red square moving left on a black background"


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vditscope.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def pipe():
    pipeline, _, _ = load_pipeline("tiny-wan", "cpu")
    return pipeline


def generate(pipe, **extra):
    return pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **SMALL, **extra).frames[0]


# ----------------------------------------------------------------------------------------------
# interventions


def test_identity_edit_is_bit_identical_and_leaves_no_trace(pipe) -> None:
    dense = generate(pipe)
    with intervene(pipe, [AttentionEdit()]) as session:
        same = generate(pipe)
    assert np.array_equal(dense, same) and session.totals.sparsity == 0 and not session.edit_records
    assert "_diffusers_hook" not in pipe.transformer.blocks[0].attn1.__dict__
    assert np.array_equal(generate(pipe), dense)


def test_edits_follow_layers_steps_branches_and_heads(pipe) -> None:
    edit = AttentionEdit(bottom_k=0.5, layers={1, 2}, steps=(1, 3), branches={"cond"}, heads={0, 3})
    dense = generate(pipe)
    with intervene(pipe, [edit]) as session:
        edited = generate(pipe)
    table = session.edit_table()
    assert set(table.layer) == {1, 2} and set(table.step) == {1, 2} and set(table.branch) == {"cond"}
    assert set(table["head"]) == {0, 3}
    # 640 video tokens: floor(0.5 * 640) = 320 keys dropped of each row
    assert np.allclose(table.entries_dropped, 0.5) and (table.mass_dropped > 0).all()
    assert not np.array_equal(edited, dense)
    # 2 edited layers of 4, 2 of 3 steps, cond only (half of the calls), 2 of 4 heads
    assert session.totals.sparsity == pytest.approx(0.5 * (2 / 4) * (2 / 3) * (1 / 2) * (2 / 4), rel=1e-6)


def test_an_edit_raises_nothing_when_an_exception_escapes(pipe) -> None:
    with pytest.raises(RuntimeError, match="boom"), intervene(pipe, [AttentionEdit(bottom_k=0.3)]):
        raise RuntimeError("boom")
    assert "_diffusers_hook" not in pipe.transformer.blocks[0].attn1.__dict__


def test_capture_inside_an_intervention_records_the_edited_generation(pipe) -> None:
    edit = AttentionEdit(temperature=0.5, layers={0})
    with intervene(pipe, [edit]):
        alone = generate(pipe)
        with capture(pipe, layers=[0, 3]) as cap:
            both = generate(pipe)
    assert np.array_equal(alone, both)
    assert set(cap.table().layer) == {0, 3}


def test_fast_mask_edits_equal_the_exact_path_and_skip_the_dense_call(pipe, monkeypatch) -> None:
    from vditscope.capture.calls import ObservedCall

    runs = []
    original = ObservedCall.run
    monkeypatch.setattr(ObservedCall, "run", lambda call: runs.append(call.site.kind) or original(call))
    for edit in (AttentionEdit(mask="tiles", window=(1, 1, 1)), AttentionEdit(mask="blocks", block_mass=0.5)):
        with intervene(pipe, [edit]) as exact:
            expected = generate(pipe)
        runs.clear()
        with intervene(pipe, [edit], fast=True) as fast:
            planned = generate(pipe)
        assert np.abs(planned - expected).max() < 1e-4
        assert not runs  # every self-attention call computed block-sparse only
        assert fast.totals.sparsity == pytest.approx(exact.totals.sparsity) and exact.totals.sparsity > 0
        assert np.isnan(fast.totals.mass_dropped) and exact.totals.mass_dropped > 0
    with intervene(pipe, [AttentionEdit(mask="spatial", heads={1})], fast=True):
        one_head = generate(pipe)
    assert runs and not np.array_equal(one_head, generate(pipe))  # other heads keep the dense call


def test_block_and_mask_edits_round_trip_and_old_plans_still_load() -> None:
    edit = AttentionEdit(mask="blocks", block_mass=0.7, layers={2})
    assert AttentionEdit.from_dict(json.loads(json.dumps(edit.to_dict()))) == edit
    assert "block_mass" not in AttentionEdit(bottom_k=0.2).to_dict()
    assert AttentionEdit.from_dict({"bottom_k": 0.2, "layers": [1]}) == AttentionEdit(bottom_k=0.2, layers={1})


@pytest.mark.parametrize(
    "kwargs", [{"mask": "blocks", "window": (1, 1, 1)}, {"block_mass": 0.5}, {"mask": "tiles", "block_mass": 0.5},
               {"mask": "blocks", "block_mass": 1.5}, {"mask": "blocks", "top_p": 0.5}],
)  # fmt: skip
def test_bad_block_edits_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        AttentionEdit(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"bottom_k": 1.0}, {"bottom_k": -0.1}, {"top_p": 0.0}, {"temperature": 0.0}, {"layers": set()},
               {"steps": (3, 3)}, {"branches": {"both"}}, {"bottom_k": 0.2, "top_p": 0.5},
               {"mask": "tiles", "bottom_k": 0.5}, {"window": (1, 1, 1)}, {"mask": "zigzag"}],
)  # fmt: skip
def test_bad_edits_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        AttentionEdit(**kwargs)


def test_edit_round_trips_through_json() -> None:
    edit = AttentionEdit(top_p=0.8, temperature=2.0, layers={3, 1}, heads={0}, steps=(2, 9), branches={"cond"})
    assert AttentionEdit.from_dict(json.loads(json.dumps(edit.to_dict()))) == edit


# ----------------------------------------------------------------------------------------------
# the cells of a sweep, and the plan


def test_cells_of_each_scope() -> None:
    per_layer = plan_cells(SweepRequest(levels=(0.1, 0.5), prompts=("a", "b"), seeds=(0, 1)), 4, 2)
    assert len(per_layer) == 4 * 2 * 2 * 2 and {c.layers for c in per_layer} == {"0", "1", "2", "3"}
    glob = plan_cells(SweepRequest(scope="global", levels=(0.5,), layers=(1, 2)), 4, 1)
    assert [c.layers for c in glob] == ["1,2"] and glob[0].edit.layers == {1, 2}
    leave = plan_cells(SweepRequest(scope="leave-out", levels=(0.5,), leave_out=(3,)), 4, 1)
    assert [c.layers for c in leave] == ["all", "all-but-3"] and leave[1].edit.layers == {0, 1, 2}
    temp = plan_cells(SweepRequest(mode="temperature", temperatures=(0.5, 2.0), levels=(0.0, 0.3)), 4, 1)
    assert [(c.edit.temperature, c.edit.bottom_k) for c in temp] == [(0.5, 0.0), (0.5, 0.3), (2.0, 0.0), (2.0, 0.3)]
    with pytest.raises(VditscopeError, match="out of range"):
        plan_cells(SweepRequest(layers=(4,)), 4, 1)


def test_plan_takes_the_largest_level_above_the_target() -> None:
    rows = [
        {"scope": "per-layer", "method": "bottom-k", "layer": layer, "k": k, "psnr": psnr}
        for layer, k, psnr in [(0, 0.3, 40), (0, 0.6, 33), (0, 0.9, 20), (1, 0.3, 25), (1, 0.6, 20), (1, 0.9, 10)]
    ]
    plan = sparsity_plan(pd.DataFrame(rows), target=30.0, steps=(2, 10))
    assert plan["layers"] == {"0": 0.6, "1": 0.0}
    assert [AttentionEdit.from_dict(e) for e in plan["edits"]] == [
        AttentionEdit(bottom_k=0.6, layers={0}, steps=(2, 10))
    ]


def test_block_mass_plan_takes_the_smallest_mass_above_the_target() -> None:
    rows = [
        {"scope": "per-layer", "method": "blocks", "layer": layer, "p": p, "psnr": psnr}
        for layer, p, psnr in [(0, 0.5, 35), (0, 0.9, 40), (1, 0.5, 20), (1, 0.9, 25), (2, 0.5, 10), (2, 0.9, 31)]
    ]
    plan = sparsity_plan(pd.DataFrame(rows), target=30.0)
    assert plan["method"] == "blocks" and plan["layers"] == {"0": 0.5, "1": 1.0, "2": 0.9}
    assert [AttentionEdit.from_dict(e) for e in plan["edits"]] == [
        AttentionEdit(mask="blocks", block_mass=0.5, layers={0}),
        AttentionEdit(mask="blocks", block_mass=0.9, layers={2}),
    ]


def test_mask_plan_puts_the_mask_where_the_target_holds() -> None:
    rows = [
        {"scope": "per-layer", "method": "tiles", "layer": layer, "mask": "tiles", "psnr": psnr}
        for layer, psnr in [(0, 35.0), (0, 33.0), (1, 20.0), (2, 31.0)]
    ]
    plan = sparsity_plan(pd.DataFrame(rows), target=30.0, steps=(1, 3), window=(0, 1, 1))
    assert plan["layers"] == {"0": "tiles", "1": "dense", "2": "tiles"}
    assert [AttentionEdit.from_dict(e) for e in plan["edits"]] == [
        AttentionEdit(mask="tiles", window=(0, 1, 1), layers={0, 2}, steps=(1, 3))
    ]
    assert sparsity_plan(pd.DataFrame(rows), target=40.0)["edits"] == []


# ----------------------------------------------------------------------------------------------
# the command line


def sweep_args(out: Path, *extra: str) -> list[str]:
    return ["sweep", "sparsity", "--out", str(out), "--prompt", PROMPT, *SMALL_ARGS, *extra]


def test_sweep_table_report_and_plan(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = run_cli(*sweep_args(out, "--per-layer", "--k", "0,0.5", "--layers", "0,3", "--psnr-target", "0"))
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "sweep.parquet")
    assert {"layers", "k", "temperature", "prompt", "seed", "psnr", "ssim", "mass_dropped"} <= set(table.columns)
    assert len(table) == 4 and list(table.layers) == ["0", "0", "3", "3"]
    dense = table[table.k == 0]
    assert np.isinf(dense.psnr).all() and np.allclose(dense.ssim, 1.0) and (dense.mass_dropped == 0).all()
    sparse = table[table.k == 0.5]
    assert np.isfinite(sparse.psnr).all() and (sparse.mass_dropped > 0).all()
    assert sparse.sparsity.tolist() == pytest.approx([0.5 / 4, 0.5 / 4])
    assert pd.read_csv(out / "sweep.csv").shape == table.shape
    plan = json.loads((out / "plan.json").read_text())
    assert plan["layers"] == {"0": 0.5, "3": 0.5}  # a 0 dB target keeps every level
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 3 and "Layer sensitivity" in report
    assert "psnr@k=0.5" in result.stdout

    generated = run_cli("generate", "--plan", str(out / "plan.json"), "--out", str(tmp_path / "gen"), *SMALL_ARGS)
    assert generated.returncode == 0, generated.stderr
    metrics = json.loads((tmp_path / "gen" / "metrics.json").read_text())
    assert metrics["sparsity"] == pytest.approx(0.5 * 2 / 4) and 0 < metrics["psnr"] < 100
    analyzed = run_cli(
        "analyze", "--plan", str(out / "plan.json"), "--out", str(tmp_path / "an"), "--seed", "0", "--prompt", PROMPT,
        *SMALL_ARGS,
    )  # fmt: skip
    assert analyzed.returncode == 0, analyzed.stderr
    run = json.loads((tmp_path / "an" / "run.json").read_text())
    assert len(run["plan_edits"]) == 2
    assert "sparsity plan applied" in (tmp_path / "an" / "report.html").read_text()


def test_structured_sweeps(tmp_path: Path) -> None:
    svg = run_cli(*sweep_args(tmp_path / "svg", "--method", "svg", "--global", "--dense-first-steps", "1"))
    assert svg.returncode == 0, svg.stderr
    table = pd.read_parquet(tmp_path / "svg" / "sweep.parquet")
    assert list(table["mask"]) == ["svg"] and table.layers.tolist() == ["all"]
    # the video grid is 5 frames: a spatial or temporal mask drops most entries in 2 of 3 steps
    assert 0.3 < float(table.sparsity.iloc[0]) < 2 / 3 and np.isfinite(table.psnr).all()
    # the per-head choice, "layer:letters" for each of the 4 layers' 4 heads, shown on the page; no unused levels
    masks = dict(part.split(":") for part in table["head_masks"].iloc[0].split(";"))
    assert sorted(masks) == ["0", "1", "2", "3"] and all(len(v) == 4 and set(v) <= {"s", "t"} for v in masks.values())
    page = (tmp_path / "svg" / "report.html").read_text()
    assert "Per-head windows (svg)" in page and ("spatial (100%)" in page or "temporal (100%)" in page)
    assert "<th style='text-align:left'>levels</th>" not in page and "per head: spatial or temporal" in page
    tiles = run_cli(*sweep_args(tmp_path / "tiles", "--method", "tiles", "--window", "0,1,1", "--layers", "2"))
    assert tiles.returncode == 0, tiles.stderr
    table = pd.read_parquet(tmp_path / "tiles" / "sweep.parquet")
    assert list(table["mask"]) == ["tiles"] and list(table.layer) == [2]
    assert "psnr@tiles" in tiles.stdout
    plan = json.loads((tmp_path / "tiles" / "plan.json").read_text())
    assert plan["layers"] == {"2": "tiles" if table.psnr.iloc[0] >= 30 else "dense"}


def test_block_sweep_plan_runs_block_sparse_with_times(tmp_path: Path) -> None:
    """A blocks sweep plans block masses; generate --plan runs them through FlexAttention and prints the
    dense and planned seconds side by side, compilation apart."""
    out = tmp_path / "blocks"
    swept = run_cli(*sweep_args(out, "--method", "blocks", "--p", "0.3,1", "--layers", "1,2", "--psnr-target", "0"))
    assert swept.returncode == 0, swept.stderr
    table = pd.read_parquet(out / "sweep.parquet")
    assert sorted(table.p.unique()) == [0.3, 1.0] and set(table["mask"]) == {"blocks"}
    assert (table[table.p == 1.0].edited_sparsity == 0).all() and (table[table.p == 0.3].edited_sparsity > 0).all()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["layers"] == {"1": 0.3, "2": 0.3}
    generated = run_cli("generate", "--plan", str(out / "plan.json"), "--out", str(tmp_path / "gen"), *SMALL_ARGS)
    assert generated.returncode == 0, generated.stderr
    metrics = json.loads((tmp_path / "gen" / "metrics.json").read_text())
    assert set(metrics["seconds"]) == {"dense", "planned", "compile", "speedup"}
    assert metrics["seconds"]["compile"] > 0 and metrics["mass_dropped"] is None and metrics["sparsity"] > 0
    assert "| planned" in generated.stdout and "not measured" in generated.stdout


def test_sweep_resumes_after_a_kill_with_the_same_table(tmp_path: Path) -> None:
    args = ("--per-layer", "--k", "0.3,0.6", "--layers", "1,2")
    whole = run_cli(*sweep_args(tmp_path / "whole", *args))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "vditscope.cli", *sweep_args(out, *args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list((out / "cells").glob("*.json")))
    assert 2 <= finished < 4, "the kill should land mid-sweep"
    assert not (out / "sweep.parquet").exists()
    resumed = run_cli(*sweep_args(out, *args))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "sweep.json").read_text())["cells_reused"] == finished
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "sweep.parquet"), pd.read_parquet(tmp_path / "whole" / "sweep.parquet")
    )
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sparsity", "--k", "1.0"], "k must be in [0, 1)"),
        (["sparsity", "--k", "-0.2"], "k must be in [0, 1)"),
        (["sparsity", "--method", "top-p", "--p", "0"], "p must be in (0, 1]"),
        (["sparsity", "--method", "sideways"], "unknown method"),
        (["sparsity", "--layers", "7"], "out of range"),
        (["sparsity", "--layers", ","], "empty"),
        (["sparsity", "--edit-steps", "5:2"], "step range"),
        (["sparsity", "--edit-steps", "0:50", *SMALL_ARGS], "outside"),
        (["sparsity", "--prompt", " "], "empty prompt"),
        (["sparsity", "--global", "--per-layer"], "choose one"),
        (["temperature", "--tau", "0"], "temperature must be positive"),
        (["temperature", "--tau", "-1"], "temperature must be positive"),
        (["sparsity", "--window", "1,1,1"], "--window goes with"),
        (["sparsity", "--method", "tiles", "--window", "1,1"], "three non-negative"),
        (["sparsity", "--dense-first-steps", "3", *SMALL_ARGS], "leaves no step"),
        (["diagonal"], "No such command"),
    ],
)
def test_sweep_bad_input_gives_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("sweep", *args, "--out", str(tmp_path / "s"))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_generate_rejects_a_bad_plan(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"vditscope_plan": 1, "edits": [{"bottom_k": 2.0}]}))
    result = run_cli("generate", "--plan", str(bad), "--out", str(tmp_path / "g"))
    assert result.returncode == 2 and "not a valid sparsity plan" in result.stderr
    result = run_cli("generate", "--plan", str(tmp_path / "missing.json"), "--out", str(tmp_path / "g"))
    assert result.returncode == 2 and "no such plan file" in result.stderr
    assert not (tmp_path / "g").exists()
