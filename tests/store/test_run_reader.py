"""``open_run``: a run directory back as one object, on real outputs of the command line; one clear error for
a missing file, a folder that is no run, a forged marker; escaped HTML for notebooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import vditscope
from vditscope.analyses.compare import load_run
from vditscope.errors import VditscopeError
from vditscope.store import Run, open_run
from vditscope.store.run_format import STATS_COLUMNS, SWEEP_COLUMNS

from ..runs import HOSTILE, PROMPT


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target, symlinks=True)
    return target


def test_analyze_run_reads_back(runs: dict[str, Path]) -> None:
    run = vditscope.open_run(runs["analyze"])
    assert isinstance(run, vditscope.Run) and run.command == "analyze" and run.path == runs["analyze"]
    assert run.files == vditscope.store.files_of("analyze")
    assert run.info["prompts"] == [HOSTILE] and run.info["family"] == "cogvideox"
    stats = run.stats
    assert isinstance(stats, pd.DataFrame) and set(STATS_COLUMNS) <= set(stats.columns) and len(stats) > 0
    assert set(stats.layer) == {0, 1}
    pd.testing.assert_frame_equal(run.table("heads"), pd.read_parquet(runs["analyze"] / "heads.parquet"))
    maps = run.tensors("maps")
    assert maps and all(isinstance(t, torch.Tensor) for t in maps.values())
    assert run.table().equals(stats)  # the main table
    assert repr(run).count("\n") == 0 and "analyze" in repr(run)


def test_other_commands_read_back(runs: dict[str, Path]) -> None:
    edit = open_run(runs["edit"])
    assert edit.command == "edit" and edit.info["source_prompt"] == PROMPT
    frames = edit.tensors("frames.safetensors")
    assert set(frames) == {"source", "target", "edited"} and frames["source"].shape[-1] == 3
    sinks = open_run(runs["sinks"])
    assert sinks.command == "sinks" and "sinks.parquet" in sinks.files and "lm_sinks.parquet" not in sinks.files
    assert {"layer", "head", "token_index", "token", "received", "ratio"} <= set(sinks.table().columns)
    sweep = open_run(runs["sweep sparsity"])
    assert sweep.command == "sweep sparsity" and sweep.info["mode"] == "sparsity"
    assert set(SWEEP_COLUMNS) <= set(sweep.table().columns) and "cells" in sweep.files
    with pytest.raises(VditscopeError, match="analyze runs"):
        _ = sweep.stats


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(VditscopeError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(VditscopeError, match="is a file"):
        open_run(tmp_path / "notes.txt")
    with pytest.raises(VditscopeError, match=r"not a vditscope run directory: it has no \.vditscope-COMMAND\.json"):
        open_run(tmp_path)
    (tmp_path / "run.json").write_text("{}")  # a run.json alone is no run either
    with pytest.raises(VditscopeError, match="not a vditscope run directory"):
        open_run(tmp_path)


def test_missing_required_files(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_of(runs["analyze"], tmp_path)
    (run / "stats.parquet").unlink()
    (run / "report.html").unlink()
    with pytest.raises(VditscopeError, match=r"not a complete `vditscope analyze` run: stats\.parquet, report\.html "
                       "are missing$"):  # fmt: skip
        open_run(run)
    sweep = copy_of(runs["sweep sparsity"], tmp_path / "s")
    (sweep / "sweep.parquet").unlink()
    with pytest.raises(VditscopeError, match=r"sweep\.parquet is missing \(unfinished\? rerun"):
        open_run(sweep)


def test_forged_and_foreign_markers(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_of(runs["edit"], tmp_path)
    (run / ".vditscope-evil.json").write_text(json.dumps({"command": "evil"}))
    with pytest.raises(VditscopeError, match="its marker names 'evil', which is no vditscope command"):
        open_run(run)
    (run / ".vditscope-evil.json").write_text(json.dumps({"command": "analyze"}))  # not its own name
    with pytest.raises(VditscopeError, match=r"damaged marker \.vditscope-evil\.json"):
        open_run(run)
    (run / ".vditscope-evil.json").unlink()
    with pytest.raises(VditscopeError, match="is a `vditscope edit` run, not a `vditscope analyze` run"):
        open_run(run, "analyze")
    with pytest.raises(ValueError, match="no declared run format"):
        open_run(run, "evil")


def test_unmarked_runs_of_earlier_releases_are_recognized(runs: dict[str, Path], tmp_path: Path) -> None:
    for command in ("analyze", "sweep sparsity", "edit"):  # an edit run also holds a generate run's files
        run = copy_of(runs[command], tmp_path / command)
        (run / vditscope.store.output.marker_name(command)).unlink()
        assert open_run(run).command == command
    sweep = tmp_path / "sweep sparsity" / "copy"
    info = json.loads((sweep / "sweep.json").read_text())
    (sweep / "sweep.json").write_text(json.dumps({**info, "mode": "temperature"}))
    assert open_run(sweep).command == "sweep temperature"


def test_reads_only_declared_plain_files_by_kind(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_of(runs["analyze"], tmp_path)
    opened = open_run(run)
    with pytest.raises(VditscopeError, match=r"declare no 'notes\.parquet'"):
        opened.table("notes.parquet")
    with pytest.raises(VditscopeError, match="is html, not tensors"):
        opened.tensors("report.html")
    with pytest.raises(VditscopeError, match="not a file name"):
        opened.table("../copy/stats.parquet")
    (run / "maps.safetensors").unlink()
    (run / "maps.safetensors").symlink_to(runs["analyze"] / "maps.safetensors")
    with pytest.raises(VditscopeError, match="is a link"):
        opened.tensors("maps")
    stats = pd.read_parquet(run / "stats.parquet").drop(columns=["entropy"])
    stats.to_parquet(run / "stats.parquet")
    with pytest.raises(VditscopeError, match="lacks the column entropy"):
        _ = opened.stats
    (run / "run.json").write_text("{not json")
    with pytest.raises(VditscopeError, match=r"run\.json is not valid JSON"):
        _ = open_run(run).info
    (run / "heads.parquet").write_bytes(b"PAR1 damaged")
    with pytest.raises(VditscopeError, match=r"could not read .*heads\.parquet"):
        opened.table("heads")


def test_html_summary_escapes_what_came_from_disk(runs: dict[str, Path]) -> None:
    run = open_run(runs["analyze"])
    html = run._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "run&lt;i&gt;&amp;amp;" in html and "<i>&" not in html  # the folder name is text too
    assert "stats.parquet" in html and "KiB" in html and "vditscope analyze" in html
    damaged = Run(runs["analyze"] / "missing", run.format)  # a summary never raises
    assert "vditscope analyze" in damaged._repr_html_()


def test_compare_reads_through_open_run(runs: dict[str, Path], tmp_path: Path) -> None:
    data = load_run(runs["analyze"])
    assert data.run["prompts"] == [HOSTILE] and data.maps and data.similarity is not None
    with pytest.raises(VditscopeError, match="is a `vditscope edit` run, not a `vditscope analyze` run"):
        load_run(runs["edit"])
    with pytest.raises(VditscopeError, match="not a run directory"):
        load_run(tmp_path / "missing")
    old = copy_of(runs["analyze"], tmp_path)  # an older analyze run: no marker, fewer files
    for name in (".vditscope-analyze.json", "head_sinks.parquet", "similarity.parquet"):
        (old / name).unlink()
    data = load_run(old)
    assert data.maps and data.similarity is None
    (old / "maps.safetensors").unlink()
    with pytest.raises(VditscopeError, match=r"maps\.safetensors is missing"):
        load_run(old)
