"""``RunWriter``: a command writes only what its format declares, each file by its declared kind; a run it
writes inside ``OutputDir`` (whose files default to the format's) reads back with ``open_run``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from vditscope.store import OutputDir, RunWriter, files_of, open_run


def edit_frames() -> dict[str, torch.Tensor]:
    return {name: torch.rand(3, 8, 8, 3) for name in ("source", "target", "edited")}


def test_a_run_written_by_the_writer_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "edit"
    with OutputDir(out, "edit") as output, output.staging() as staging:
        assert output.files == files_of("edit")
        writer = RunWriter(staging, "edit")
        frames = edit_frames()
        writer.tensors("frames.safetensors", frames)
        writer.json("metrics.json", {"source_prompt": "<b>a</b>", "path": Path("/x")})
        for name in ("source.mp4", "target.mp4", "edited.mp4", "preview.gif"):
            writer.bytes(name, b"not really a video")
        assert writer.missing() == []
    run = open_run(out)
    assert run.command == "edit" and run.info == {"source_prompt": "<b>a</b>", "path": "/x"}
    assert all(torch.equal(run.tensors("frames")[k], v) for k, v in frames.items())
    assert json.loads((out / ".vditscope-edit.json").read_text())["command"] == "edit"


def test_undeclared_names_and_wrong_kinds_are_refused(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "analyze")
    table = pd.DataFrame({"layer": [0], "head": [0]})
    with pytest.raises(ValueError, match=r"does not declare 'notes\.parquet'"):
        writer.table("notes.parquet", table)
    with pytest.raises(ValueError, match=r"declares run\.json as json, not table"):
        writer.table("run.json", table)
    with pytest.raises(ValueError, match=r"declares stats\.parquet as table, not tensors"):
        writer.tensors("stats.parquet", {})
    with pytest.raises(ValueError, match="not a file name"):
        writer.json("../run.json", {})
    with pytest.raises(ValueError, match="needs the columns prompt, seed, step"):
        writer.table("stats.parquet", table)  # the contract's columns
    with pytest.raises(ValueError, match="needs the tensors target, edited"):
        RunWriter(tmp_path, "edit").tensors("frames.safetensors", {"source": torch.zeros(1)})
    with pytest.raises(ValueError, match="no declared run format"):
        RunWriter(tmp_path, "demo")
    assert list(tmp_path.iterdir()) == []  # nothing was written
    assert "stats.parquet" in RunWriter(tmp_path, "analyze").missing()


def test_globs_folders_and_atomic_writes(tmp_path: Path) -> None:
    sinks = RunWriter(tmp_path / "sinks", "sinks", atomic=True)
    columns = ["layer", "head", "token_index", "token", "received", "ratio"]
    path = sinks.table("lm_sinks.parquet", pd.DataFrame([[0, 0, 0, "a", 0.5, 2.0]], columns=columns))
    assert pd.read_parquet(path).token.tolist() == ["a"]
    assert sorted(p.name for p in (tmp_path / "sinks").iterdir()) == ["lm_sinks.parquet"]  # no temporary left
    sweep = RunWriter(tmp_path / "sweep", "sweep sparsity")
    assert sweep.folder_path("cells").is_dir()
    with pytest.raises(ValueError, match="as folder, not json"):
        sweep.json("cells", {})
    clips = RunWriter(tmp_path / "clips", "render-clips")
    clips.text("clip0000.txt", "a red square")
    with pytest.raises(ValueError, match=r"declares clip0000\.mp4 as video, not html or text"):
        clips.text("clip0000.mp4", "x")
    assert clips.missing() == ["clip*.mp4"]
