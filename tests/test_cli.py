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
    assert run["family"] == "wan" and run["layers"] == 4 and run["heads"] == 4 and run["trained"] is True
    assert run["prompts"][1] == "a blue circle moving up on a gray background"
    assert run["seeds"] == [0] and run["steps"] == 3
    assert {"torch", "diffusers", "vditscope"} <= set(run["versions"])
    stats = pd.read_parquet(out / "stats.parquet")
    assert set(TABLE_COLUMNS) <= set(stats.columns)
    assert set(stats.prompt) == {0, 1} and set(stats.step) == {0, 1, 2} and set(stats.branch) == {"cond", "uncond"}
    assert stats.entropy.notna().all()
    maps = load_file(str(out / "maps.safetensors"))
    # 9 frames fold into 5 latent frames (the first alone, then pairs)
    assert "frame_map.p0.s0.self.layer0" in maps and maps["frame_map.p0.s0.self.layer0"].shape == (4, 5, 5)
    assert "text_received.p0.s0.cross.layer3" in maps
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 3 and "data:image/gif;base64" in report
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


def test_shipped_model_names_and_metrics() -> None:
    import vditscope
    from vditscope.errors import VditscopeError

    directory = vditscope.tiny_model_dir()
    assert directory == vditscope.tiny_model_dir("tiny") == vditscope.tiny_model_dir("tiny-wan")
    settings = json.loads((directory / "vditscope.json").read_text())
    assert set(settings["generation"]) >= {"height", "width", "num_frames", "num_inference_steps", "guidance_scale"}
    assert set(settings["vocabulary"]) == {"colors", "shapes", "directions", "backgrounds"}
    assert settings["metrics"]["color_accuracy"] >= 0.8
    with pytest.raises(VditscopeError, match="unknown shipped model"):
        vditscope.tiny_model_dir("tiny-mochi")


def test_eval_tiny_prints_accuracies(tmp_path: Path) -> None:
    result = run_cli("eval-tiny", "--count", "2", "--json", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    assert "colour accuracy" in result.stdout and "direction accuracy" in result.stdout
    assert "layer 0:" in result.stdout
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["count"] == 2 and 0 <= data["color_accuracy"] <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train-tiny", "--family", "mochi"], "family"),
        (["train-tiny", "--steps", "0"], "positive"),
        (["eval-tiny", "--count", "0"], "positive"),
        (["eval-tiny", "--model", "/nope"], "no such model"),
    ],
)
def test_training_commands_reject_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(*args, *(["--out", str(tmp_path / "t")] if args[0] == "train-tiny" else []))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t").exists()
