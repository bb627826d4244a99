"""The quality metrics against torchmetrics on whole videos: SSIM computed a few frames at a time (a
480 x 832 x 17 video at once asked for 32 GB) is the same mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from vditscope.analyses import quality


def videos(frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.random((frames, height, width, 3))
    return a, np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)


@pytest.mark.parametrize("pixels", [1, 2 * 21 * 19, 1 << 20])  # one frame, two frames, all frames per chunk
def test_ssim_in_chunks_is_the_whole_video_mean(monkeypatch, pixels) -> None:
    monkeypatch.setattr(quality, "SSIM_PIXELS", pixels)
    a, b = videos(7, 21, 19)
    whole = structural_similarity_index_measure(
        *(torch.tensor(x).permute(0, 3, 1, 2) for x in (a, b)), data_range=1.0, kernel_size=11
    )
    assert quality.ssim(a, b) == pytest.approx(float(whole), abs=1e-6)
    assert quality.ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_small_frames_take_the_largest_odd_window() -> None:
    a, b = videos(3, 8, 6)
    expected = structural_similarity_index_measure(
        *(torch.tensor(x).permute(0, 3, 1, 2) for x in (a, b)), data_range=1.0, kernel_size=5
    )
    assert quality.ssim(a, b) == pytest.approx(float(expected), abs=1e-6)


def test_psnr_is_inf_for_identical_frames() -> None:
    a, b = videos(2, 9, 9)
    assert math.isinf(quality.psnr(a, a))
    expected = peak_signal_noise_ratio(torch.tensor(b), torch.tensor(a), data_range=1.0)
    assert quality.psnr(b, a) == pytest.approx(float(expected))
