"""The command line: the main job on the shipped model, and one clear line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from vditscope.capture import TABLE_COLUMNS

SMALL = ["--num-frames", "9", "--steps", "3", "--height", "32", "--width", "64"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vditscope.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "analyze" in result.stdout


def test_analyze_writes_the_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "analyze",
        "--out",
        str(out),
        "--prompt",
        "a red square moving left on a black background",
        "--prompt",
        "a blue circle moving up on a gray background",
        *SMALL,
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["family"] == "wan" and run["layers"] == 2 and run["heads"] == 2
    assert run["prompts"][1] == "a blue circle moving up on a gray background"
    assert run["seeds"] == [0] and run["steps"] == 3
    assert {"torch", "diffusers", "vditscope"} <= set(run["versions"])
    stats = pd.read_parquet(out / "stats.parquet")
    assert set(TABLE_COLUMNS) <= set(stats.columns)
    assert set(stats.prompt) == {0, 1} and set(stats.step) == {0, 1, 2} and set(stats.branch) == {"cond", "uncond"}
    assert stats.entropy.notna().all()
    maps = load_file(str(out / "maps.safetensors"))
    assert "frame_map.p0.s0.self.layer0" in maps and maps["frame_map.p0.s0.self.layer0"].shape == (2, 3, 3)
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 3 and "data:image/gif;base64" in report
    assert "random weights" in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/does/not/exist"], "no such model directory"),
        (["--model", "{tmp}"], "not a diffusers pipeline directory"),
        (["--model", "{corrupt}"], "not valid JSON"),
        (["--model", "{other}"], "not a supported video pipeline"),
        (["--prompt", "  "], "empty prompt"),
        (["--layers", "9"], "out of range"),
        (["--capture-steps", "50", *SMALL], "out of range"),
        (["--top-mass", "sometimes"], "top-mass"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model_index.json").write_text("{not json")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(tmp=empty, corrupt=corrupt, other=other) for a in args]
    out = tmp_path / "out"
    result = run_cli("analyze", "--out", str(out), *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
