"""Editing by self-attention transfer: the transferred attention against a dense float64
reference, an identity transfer, the edit and edit-sweep commands, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vditscope.adapters.loading import load_pipeline
from vditscope.capture.transfer import TransferConfig, transfer, transferred
from vditscope.layout import TokenLayout
from vditscope.tiny import tiny_model_dir

from ..runs import assert_renders_again

SMALL_ARGS = ["--num-frames", "9", "--steps", "3", "--height", "32", "--width", "32"]
SOURCE = "a red square moving right on a black background"
TARGET = "a green square moving right on a black background"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vditscope.cli", *args], capture_output=True, text=True, timeout=600)


def sdpa64(q, k, v, scale):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)


@pytest.mark.parametrize("mode", ["attention", "kv"])
@pytest.mark.parametrize("layout", [TokenLayout(2, 3, 4), TokenLayout(2, 3, 4, video_start=5, text=(0, 5))])
def test_transferred_attention_matches_a_dense_reference(mode, layout) -> None:
    """Video rows: source logits (attention) or source keys/values (kv) on video keys, target on text."""
    torch.manual_seed(0)
    num = layout.video_stop
    src = tuple(torch.randn(1, 2, num, 8, dtype=torch.float64) for _ in range(3))
    tgt = tuple(torch.randn(1, 2, num, 8, dtype=torch.float64) for _ in range(3))
    scale = 0.3
    out = transferred(lambda *a, **kw: sdpa64(*a, **kw), src, tgt, layout, scale, mode, sdpa64(*tgt, scale))
    video = torch.zeros(num, dtype=torch.bool)
    video[layout.video_start : layout.video_stop] = True
    logits = (tgt[0] @ tgt[1].transpose(-1, -2)) * scale
    values = tgt[2].clone()
    if mode == "attention":
        source_logits = (src[0] @ src[1].transpose(-1, -2)) * scale
        logits[..., video[:, None] & video[None, :]] = source_logits[..., video[:, None] & video[None, :]]
    else:
        mixed = (tgt[0] @ src[1].transpose(-1, -2)) * scale
        logits[..., video[:, None] & video[None, :]] = mixed[..., video[:, None] & video[None, :]]
        values[..., video, :] = src[2][..., video, :]
    expected = torch.softmax(logits, -1) @ values
    expected[..., ~video, :] = sdpa64(*tgt, scale)[..., ~video, :]  # text rows stay the target's
    torch.testing.assert_close(out.double(), expected, atol=1e-10, rtol=1e-10)


def test_transfer_between_equal_prompts_is_the_identity() -> None:
    pipe, _, _ = load_pipeline("tiny-wan", "cpu")
    settings = {"num_frames": 9, "num_inference_steps": 3, "height": 32, "width": 64, "max_sequence_length": 16}

    def run():
        generators = [torch.Generator().manual_seed(0) for _ in range(2)]
        return pipe(prompt=[SOURCE, SOURCE], generator=generators, output_type="np", **settings).frames

    plain = run()
    with transfer(pipe, TransferConfig(mode="attention")) as session:
        edited = run()
    assert session.transferred_calls == 4 * 3 * 2  # layers x steps x CFG branches
    assert np.array_equal(edited[1], plain[0]) and np.array_equal(plain[1], plain[0])
    assert "_diffusers_hook" not in pipe.transformer.blocks[0].attn1.__dict__


def test_edit_transfers_in_the_first_80_percent_of_the_steps_unless_told() -> None:
    """edit's default range: the first 80% of the schedule (16 of 20 steps), at least one step; a range asked
    for, or a schedule of unknown length, is left as it is."""
    from vditscope.analyses.edit import transfer_steps

    assert (
        transfer_steps(None, 20) == (0, 16) and transfer_steps(None, 1) == (0, 1) and transfer_steps(None, 3) == (0, 2)
    )
    assert transfer_steps((5, 20), 20) == (5, 20) and transfer_steps(None, None) is None


def test_edit_on_the_shipped_model_keeps_the_source_layout_and_changes_the_colour(tmp_path: Path) -> None:
    """Shipped settings (the default model's steps and frames): the claim of the issue, measured."""
    result = run_cli("edit", "--source-prompt", SOURCE, "--target-prompt", TARGET, "--out", str(tmp_path / "e"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["edited_vs_source"]["ssim"] > metrics["target_vs_source"]["ssim"] + 0.1
    assert metrics["colour"] == {"source": "red", "target": "green", "edited": "green"}
    assert metrics["steps"] == [0, 16]  # the first 80% of the default model's 20 steps
    tracks = metrics["track_distance_px"]
    assert tracks["edited_vs_source"] < 0.5 * tracks["target_vs_source"]
    frames = load_file(str(tmp_path / "e" / "frames.safetensors"))
    assert set(frames) == {"source", "target", "edited"}
    count = json.loads((tiny_model_dir() / "vditscope.json").read_text())["generation"]["num_frames"]
    assert frames["edited"].shape == (count, 32, 32, 3) and 0 <= float(frames["edited"].min()) <= 1
    reader = imageio.get_reader(tmp_path / "e" / "edited.mp4", format="FFMPEG")
    assert reader.count_frames() == count and reader.get_data(0).shape[0] >= 256
    assert (tmp_path / "e" / "preview.gif").stat().st_size > 1000


def test_edit_sweep_scores_every_layer(tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = ["edit-sweep", "--source-prompt", SOURCE, "--target-prompt", TARGET, "--out", str(out), *SMALL_ARGS]
    result = run_cli(*args, "--window", "2")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "edit_sweep.csv")
    assert list(table.columns) == ["layers", "first_layer", "ssim_to_source", "psnr_to_source", "track_distance_px"]
    assert list(table.layers) == ["none", "0,1", "1,2", "2,3"] and table.ssim_to_source.between(-1, 1).all()
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["edit-sweep.png", "edit-sweep.svg"]
    assert_renders_again(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source-prompt", " ", "--target-prompt", TARGET], "empty prompt"),
        (["--source-prompt", SOURCE, "--target-prompt", TARGET, "--layers", "4"], "out of range"),
        (["--source-prompt", SOURCE, "--target-prompt", TARGET, "--steps-range", "0:30"], "outside"),
        (["--source-prompt", SOURCE, "--target-prompt", TARGET, "--steps-range", "4:2"], "step range"),
        (["--source-prompt", SOURCE, "--target-prompt", TARGET, "--mode", "values"], "unknown transfer mode"),
    ],
)
def test_edit_bad_input_gives_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("edit", *args, "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists()


def test_transfer_config_validation() -> None:
    for kwargs in ({"mode": "values"}, {"layers": set()}, {"steps": (3, 1)}):
        with pytest.raises(ValueError):
            TransferConfig(**kwargs)
    assert math.isclose(TransferConfig(steps=(0, 5)).steps[1], 5)
