"""`vditscope retrain` end to end: retrain the last block of tiny-cogvideox for a few steps, then the
before/after study (sinks, sparsity sweep of the retrained layer, quality against the original)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd


def test_retrain_command_writes_model_and_study(tmp_path):
    out = tmp_path / "retrain"
    args = ["retrain", "--model", "tiny-cogvideox", "--blocks", "-1", "--train-steps", "3", "--checkpoint-every", "2",
            "--prompt", "a red square moving left on a black background", "--steps", "2", "--levels", "0.5",
            "--out", str(out)]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "vditscope.cli", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "model" / "vditscope.json").read_text())["retrained"]
    assert info["blocks"] == [3] and info["steps"] == 3 and info["mode"] == "distill"
    sinks = pd.read_parquet(out / "study_sinks.parquet")
    assert set(sinks["model"]) == {"original", "retrained"}
    assert sinks[sinks["retrained"]]["layer"].unique().tolist() == [3]
    sparsity = pd.read_parquet(out / "study_sparsity.parquet")
    assert len(sparsity) == 2 and set(sparsity["layer"]) == {3}  # one layer, one level, two models
    quality = pd.read_parquet(out / "study_quality.parquet")
    assert len(quality) == 1 and 0 < quality["psnr"].iloc[0] < 100
    study = json.loads((out / "study.json").read_text())
    # freshly re-initialized and barely trained: the last layer's sinks are gone or much weaker
    assert study["summary"]["retrained"]["max_ratio"] < study["summary"]["original"]["max_ratio"]
    assert "Retraining: before and after" in (out / "study.html").read_text()
    # vditscope report renders the study again from its files, byte for byte, its figures too
    original, figures = (out / "study.html").read_bytes(), sorted(p.name for p in (out / "figures").iterdir())
    assert "sinks.svg" in figures and "sparsity.svg" in figures
    (out / "study.html").unlink()
    shutil.rmtree(out / "figures")
    rendered = subprocess.run([sys.executable, "-m", "vditscope.cli", "report", str(out)], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert (out / "study.html").read_bytes() == original
    assert sorted(p.name for p in (out / "figures").iterdir()) == figures


def test_retrain_command_rejects_blocks_out_of_range(tmp_path):
    out = tmp_path / "never"
    args = ["retrain", "--model", "tiny-cogvideox", "--blocks", "7", "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "vditscope.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "block 7" in lines[0] and "4 blocks" in lines[0], result.stderr
    assert not out.exists()


def test_render_clips_writes_a_flow_data_folder(tmp_path):
    from vditscope.training.clips import find_clips, read_clip, shapes_training

    out = tmp_path / "clips"
    result = subprocess.run(
        [sys.executable, "-m", "vditscope.cli", "render-clips", "--count", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    clips = find_clips(out)
    assert len(clips) == 3 and all(caption.startswith("a ") for _, caption in clips)
    frames = shapes_training("tiny").frames  # the default model's clips
    assert read_clip(clips[0][0], 32, 32, frames).shape == (3, frames, 32, 32)  # every frame kept
    bad = subprocess.run(
        [sys.executable, "-m", "vditscope.cli", "render-clips", "--count", "0", "--out", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "positive" in bad.stderr
    assert not (tmp_path / "none").exists()
