"""Text-token dominance ablation: only the first text token reaches the video (mask or truncate)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vditscope.adapters.loading import load_pipeline
from vditscope.capture.text_ablation import first_text_token_only

from ..runs import assert_renders_again

SETTINGS = {"num_frames": 9, "num_inference_steps": 3, "height": 32, "width": 64, "max_sequence_length": 16}
PROMPT = "a red square moving right on a black background"


def generate(pipe):
    return pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **SETTINGS).frames[0]


@pytest.mark.parametrize(("model", "calls"), [("tiny-wan", 4 * 3 * 2), ("tiny-cogvideox", 4 * 3)])
def test_mask_hides_all_text_keys_but_the_first(model: str, calls: int) -> None:
    """Wan: every cross-attention call (cond and uncond run apart); CogVideoX: every joint call."""
    pipe, _, _ = load_pipeline(model, "cpu")
    full = generate(pipe)
    with first_text_token_only(pipe, "mask") as session:
        masked = generate(pipe)
    assert session.masked_calls == calls
    assert not np.array_equal(masked, full)
    assert np.array_equal(generate(pipe), full), "hooks must be gone after the block"


def test_truncate_zeros_the_embedding_after_the_first_token_and_removes_its_hook() -> None:
    pipe, _, _ = load_pipeline("tiny-wan", "cpu")
    seen = []
    with first_text_token_only(pipe, "truncate"):  # the observer below runs after the ablation's hook
        handle = pipe.text_encoder.register_forward_hook(lambda m, a, out: seen.append(out.last_hidden_state.clone()))
        try:
            truncated = generate(pipe)
        finally:
            handle.remove()
    assert len(seen) == 2  # prompt and negative prompt
    assert all(float(h[:, 1:].abs().max()) == 0 and float(h[:, 0].abs().max()) > 0 for h in seen)
    assert not pipe.text_encoder._forward_hooks
    assert not np.array_equal(truncated, generate(pipe))
    with pytest.raises(ValueError, match="unknown ablation"), first_text_token_only(pipe, "drop"):
        pass


def test_text_ablation_command(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "vditscope.cli", "text-ablation", "--prompt", PROMPT]
    small = ["--num-frames", "9", "--steps", "3", "--height", "32", "--width", "32"]
    result = subprocess.run([*args, "--out", str(tmp_path / "t"), *small], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(tmp_path / "t" / "text_ablation.parquet")
    assert list(table.method) == ["mask", "truncate"] and table.ssim.between(-1, 1).all()
    assert {"colour_full", "colour_ablated", "psnr"} <= set(table.columns)
    assert_renders_again(tmp_path / "t")
    bad = subprocess.run([*args, "--method", "drop", "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown ablation" in bad.stderr and not (tmp_path / "b").exists()
