"""Videos as files people open: animated GIFs for the reports and previews, H.264 mp4s for the
edit outputs. Frames are (T, H, W, 3) floats in [0, 1], scaled up by whole pixels."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np


def gif_bytes(frames: np.ndarray) -> bytes:
    """An animated GIF of (T, H, W, 3) frames in [0, 1], scaled up by whole pixels to about 128 px."""
    import imageio.v3 as iio

    video = (np.clip(frames, 0, 1) * 255).astype(np.uint8)
    scale = max(1, 128 // max(video.shape[1], 1))
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    buffer = io.BytesIO()
    iio.imwrite(buffer, list(video), extension=".gif", duration=120, loop=0)
    return buffer.getvalue()


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """An H.264 mp4 (imageio's ffmpeg plugin) of (T, H, W, 3) frames in [0, 1], scaled up by whole
    pixels to at least 256 px and padded to multiples of 16."""
    import imageio.v2 as imageio

    video = (np.clip(frames, 0, 1) * 255).astype(np.uint8)
    scale = max(1, math.ceil(256 / max(video.shape[1], video.shape[2])))
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = (-video.shape[1]) % 16, (-video.shape[2]) % 16
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    imageio.mimwrite(path, list(video), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
