"""A folder of captioned training videos: every ``*.mp4`` / ``*.gif`` with a same-stem ``.txt`` caption.

Clips are read with imageio, cut to their first ``num_frames`` frames and resized (scaled to
cover, then center-cropped, so shapes keep their aspect) to the size the model generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analyses.options import checked_seed
from ..errors import VditscopeError
from ..store import OutputDir
from ..tiny import TinyConfig

VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass(frozen=True)
class Clip:
    """One training video (3, F, H, W) in [-1, 1] and its caption."""

    video: torch.Tensor
    caption: str


def find_clips(folder: Path) -> list[tuple[Path, str]]:
    """(video path, caption) of every captioned video in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VditscopeError(f"no such video folder: {folder}")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise VditscopeError(f"{folder} holds no training videos (*.mp4 or *.gif with a same-stem .txt caption)")
    found = []
    for path in videos:
        caption_path = path.with_suffix(".txt")
        if not caption_path.is_file():
            raise VditscopeError(f"{path} has no caption file {caption_path.name}")
        caption = caption_path.read_text().strip()
        if not caption:
            raise VditscopeError(f"the caption file {caption_path} is empty")
        found.append((path, caption))
    return found


def read_clip(path: Path, height: int, width: int, num_frames: int) -> torch.Tensor:
    """The first ``num_frames`` frames of a video as (3, F, height, width) float32 in [-1, 1]."""
    import imageio.v3 as iio

    try:
        frames = np.asarray(iio.imread(path, index=None))
    except Exception as exc:
        raise VditscopeError(f"could not read the video {path}: {str(exc).splitlines()[0]}") from exc
    if frames.ndim == 3:  # one grayscale video (F, H, W), or a single RGB image (H, W, 3)
        frames = frames[..., None] if frames.shape[-1] not in (3, 4) else frames[None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = frames[..., :3]
    if len(frames) < num_frames:
        raise VditscopeError(f"{path} has {len(frames)} frames; the model generates {num_frames}")
    video = torch.from_numpy(frames[:num_frames].astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # F, 3, H, W
    scale = max(height / video.shape[2], width / video.shape[3])
    covered = (max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale)))
    if covered != tuple(video.shape[2:]):
        video = torch.nn.functional.interpolate(video, size=covered, mode="bilinear", antialias=True)
    top, left = (covered[0] - height) // 2, (covered[1] - width) // 2
    video = video[:, :, top : top + height, left : left + width].clamp(0, 1)
    return (video * 2 - 1).permute(1, 0, 2, 3).contiguous()


def load_clips(folder: Path, height: int, width: int, num_frames: int) -> list[Clip]:
    """Every captioned video of ``folder``, read and resized."""
    return [Clip(read_clip(path, height, width, num_frames), caption) for path, caption in find_clips(folder)]


def shapes_training(model: str | Path) -> TinyConfig:
    """The shapes training configuration a model folder (or shipped name) records in its vditscope.json: the
    clip size, frame count and style its clips had."""
    from ..adapters.loading import resolve_model_dir
    from ..adapters.settings import model_settings

    model_dir = resolve_model_dir(model)
    saved = model_settings(model_dir).get("training")
    if not isinstance(saved, dict) or "size" not in saved:
        raise VditscopeError(
            f"{model} was not trained on the shapes clips (its vditscope.json records no shapes training)"
        )
    return TinyConfig.from_saved(saved)


def write_shape_clips(
    folder: Path, count: int, *, seed: int = 0, config: TinyConfig | None = None, overwrite: bool = False
) -> Path:
    """Render ``count`` captioned shapes clips (training caption combinations only) into ``folder`` as
    ``clipNNNN.mp4`` + ``.txt``, at the size, frame count and clip style of ``config`` (default: the default
    tiny model's): a data folder for ``retrain --mode flow`` on the tiny models. MP4, not GIF: GIF writers
    merge repeated frames and would shorten a clip."""
    import imageio.v3 as iio

    from ..data import shapes

    if count < 1:
        raise VditscopeError(f"the clip count must be positive, got {count}")
    checked_seed(seed)
    config = config if config is not None else TinyConfig()
    output = OutputDir(folder, "render-clips", overwrite=overwrite)
    with output, output.staging() as staging:
        train, _ = shapes.split_specs(seed)
        rng = np.random.default_rng(seed)
        for i, spec in enumerate(shapes.sample_specs(count, rng, train)):
            clip = shapes.render_clip(spec, frames=config.frames, size=config.size, rng=rng, style=config.clip_style())
            video = (clip * 255).round().astype(np.uint8)
            iio.imwrite(staging / f"clip{i:04d}.mp4", video, fps=8, quality=10, macro_block_size=16)
            (staging / f"clip{i:04d}.txt").write_text(spec.caption)
    return output.path
