"""Placement choices (offload, compile, context parallelism): refused in one line before anything loads, and
compiled runs that write the eager run's statistics."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.in_process import run_main
from vditscope.adapters.placement import Placement
from vditscope.errors import VditscopeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL = ["--num-frames", "5", "--steps", "2", "--height", "32", "--width", "32", "--seed", "0", "--map-tiles", "16"]


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (Placement("cpu", compile="max"), "unknown compile mode max; choose one of none, regional, model"),
        (Placement("cpu", offload="disk"), "unknown offload disk"),
        (Placement("cpu", offload="sequential"), "--offload sequential needs an accelerator device"),
        (Placement("cpu", context_parallel=0), "--context-parallel must be positive, got 0"),
        (Placement("cpu", context_parallel=2), "--context-parallel 2 needs 2 processes: start it with torchrun"),
    ],
)
def test_placements_are_checked_before_loading(placement: Placement, message: str, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(VditscopeError, match=message):
        placement.check()


def test_context_parallel_with_offload_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VditscopeError, match="use it without --offload"):
        Placement("cpu", offload="group", context_parallel=2).check()


def test_the_command_line_refuses_a_launch_without_torchrun(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "run"
    code, err = run_main(["analyze", "--context-parallel", "2", "--out", str(out), *SMALL], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "torchrun --nproc-per-node 2 -m vditscope.cli" in err
    assert not out.exists()


def test_regional_compilation_of_a_model_without_repeated_blocks_is_refused(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The default model (CogVideoX: diffusers lists no repeated blocks for it) under --compile regional: one line
    that says to use --compile model, exit code 2, no run directory."""
    out = tmp_path / "regional"
    code, err = run_main(["analyze", "--compile", "regional", "--out", str(out), *SMALL], capsys, monkeypatch)
    assert code == 2 and "use --compile model" in err and "CogVideoXTransformer3DModel" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regional", "model"])
def test_a_compiled_analyze_writes_the_eager_statistics(mode: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """Inductor on tiny-wan (diffusers knows its repeated blocks): the statistics equal the eager run's (observed
    blocks run eagerly under regional full graphs; the whole-model graph breaks around them, and its compiled parts
    round differently: relative 1e-6 per step, up to 1e-5 on the largest sink ratios after two steps)."""
    runs = {}
    for compile_mode in ("none", mode):
        out = tmp_path / compile_mode
        argv = ["analyze", "--model", "tiny-wan", "--compile", compile_mode, "--out", str(out), *SMALL]
        code, err = run_main(argv, capsys, monkeypatch)
        assert code == 0, err
        runs[compile_mode] = pd.read_parquet(out / "stats.parquet")
    numeric = runs["none"].select_dtypes("number").columns
    pd.testing.assert_frame_equal(runs[mode][numeric], runs["none"][numeric], rtol=1e-4, atol=1e-5)
