"""Procedural captioned videos: a coloured shape moving across a plain background.

Deterministic by seed, made in code (no download), captioned
"a {color} {shape} moving {direction} on a {background} background". The tiny models that
ship with vditscope are trained on it, and their evaluation reads colour and motion back
from generated frames with :func:`measure_clip`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "white": (0.97, 0.97, 0.97),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.03, 0.03, 0.03),
    "gray": (0.45, 0.45, 0.45),
    "purple": (0.35, 0.10, 0.40),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
CAPTION = "a {color} {shape} moving {direction} on a {background} background"
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows; the caption is derived from it."""

    color: str
    shape: str
    direction: str
    background: str

    @property
    def caption(self) -> str:
        return CAPTION.format(color=self.color, shape=self.shape, direction=self.direction, background=self.background)


def vocabulary() -> dict[str, list[str]]:
    return {
        "colors": list(COLORS),
        "shapes": list(SHAPES),
        "directions": list(DIRECTIONS),
        "backgrounds": list(BACKGROUNDS),
    }


def all_specs() -> list[ClipSpec]:
    """Every caption combination (5 x 3 x 4 x 3 = 180)."""
    return [ClipSpec(c, s, d, b) for c in COLORS for s in SHAPES for d in DIRECTIONS for b in BACKGROUNDS]


def _shape_mask(shape: str, size: int, extent: float) -> np.ndarray:
    """Coverage (0..1) of a centred shape of side ``extent`` pixels in a size x size box."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE - size / 2
    y, x = np.meshgrid(coords, coords, indexing="ij")
    half = extent / 2
    if shape == "square":
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "circle":
        inside = x**2 + y**2 <= half**2
    elif shape == "triangle":  # apex up
        inside = (y >= -half) & (y <= half) & (np.abs(x) <= (y + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render_clip(
    spec: ClipSpec, *, frames: int, size: int, rng: np.random.Generator, extent: float | None = None
) -> np.ndarray:
    """Frames (F, size, size, 3) float32 in [0, 1]: the shape crosses the frame in its direction."""
    extent = extent if extent is not None else size * 0.34
    box = int(np.ceil(extent)) + 2
    sprite = _shape_mask(spec.shape, box, extent)
    margin = box / 2
    travel = size - 2 * margin  # from one side to the other
    dy, dx = DIRECTIONS[spec.direction]
    cross = rng.uniform(margin, size - margin)  # position across the motion
    start = margin + rng.uniform(0, 0.15) * travel
    span = travel * rng.uniform(0.7, 0.85)
    color = np.asarray(COLORS[spec.color], dtype=np.float32)
    background = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    video = np.empty((frames, size, size, 3), dtype=np.float32)
    for t in range(frames):
        along = start + span * t / max(frames - 1, 1)
        if dx:  # horizontal motion: x moves, y fixed
            cx = along if dx > 0 else size - along
            cy = cross
        else:
            cy = along if dy > 0 else size - along
            cx = cross
        coverage = np.zeros((size, size), dtype=np.float32)
        top, left = round(cy - box / 2), round(cx - box / 2)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + box, size), min(left + box, size)
        coverage[y0:y1, x0:x1] = sprite[y0 - top : y1 - top, x0 - left : x1 - left]
        video[t] = background + coverage[..., None] * (color - background)
    return video


def sample_specs(count: int, rng: np.random.Generator, specs: list[ClipSpec] | None = None) -> list[ClipSpec]:
    """``count`` specs drawn with every direction equally often (balanced batches)."""
    pool = specs if specs is not None else all_specs()
    by_direction = {d: [s for s in pool if s.direction == d] for d in DIRECTIONS}
    chosen = []
    for i in range(count):
        options = by_direction[list(DIRECTIONS)[i % len(DIRECTIONS)]]
        chosen.append(options[int(rng.integers(len(options)))])
    order = rng.permutation(count)
    return [chosen[i] for i in order]


def split_specs(seed: int = 0, held_out: int = 40) -> tuple[list[ClipSpec], list[ClipSpec]]:
    """Train and held-out caption combinations (disjoint), every direction in both."""
    rng = np.random.default_rng(seed)
    specs = all_specs()
    order = rng.permutation(len(specs))
    held = [specs[i] for i in order[:held_out]]
    train = [specs[i] for i in order[held_out:]]
    return train, held


@dataclass(frozen=True)
class ClipMeasure:
    """What the frames show: the shape's colour (nearest palette colour) and its motion."""

    color: str
    direction: str
    displacement: tuple[float, float]  # (dy, dx) of the shape's centroid, first to last frame, pixels
    foreground: float  # mean share of pixels that differ from the background


def prompt_background(prompt: str, settings: dict) -> str | None:
    """The background a shapes caption names, among a model's vocabulary (vditscope.json); None when the
    model has no shapes vocabulary or the prompt names none."""
    backgrounds = settings.get("vocabulary", {}).get("backgrounds", [])
    return next((b for b in backgrounds if f"on a {b} background" in prompt), None)


def shape_track(video: np.ndarray, background: str) -> np.ndarray:
    """Per-frame centroid (y, x) in pixels of what differs from the prompted background: (F, 2)."""
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    weight = np.clip(np.linalg.norm(video - bg, axis=-1) - 0.15, 0, None)  # (F, H, W)
    total = weight.sum(axis=(1, 2)) + 1e-6
    ys, xs = np.mgrid[: video.shape[1], : video.shape[2]]
    return np.stack([(weight * ys).sum(axis=(1, 2)) / total, (weight * xs).sum(axis=(1, 2)) / total], axis=1)


NO_SHAPE = "none"  # what measure_clip reads from frames that show no shape
MIN_FOREGROUND = 0.01  # below this share of pixels off the background, a clip shows no shape (shapes cover >= 5.8%)


def measure_clip(video: np.ndarray, background: str) -> ClipMeasure:
    """Read colour and motion from frames (F, H, W, 3) in [0, 1], knowing the prompted background; frames with
    (almost) nothing off the background read as ``NO_SHAPE`` for both, not as the nearest colour of noise."""
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    distance = np.linalg.norm(video - bg, axis=-1)  # (F, H, W)
    share = float((distance > 0.3).mean())
    if share < MIN_FOREGROUND:
        return ClipMeasure(color=NO_SHAPE, direction=NO_SHAPE, displacement=(0.0, 0.0), foreground=share)
    cy, cx = shape_track(video, background).T
    k = max(1, video.shape[0] // 4)  # average a few frames at each end against noise
    dy = float(cy[-k:].mean() - cy[:k].mean())
    dx = float(cx[-k:].mean() - cx[:k].mean())
    horizontal = "right" if dx > 0 else "left"
    vertical = "down" if dy > 0 else "up"
    direction = horizontal if abs(dx) >= abs(dy) else vertical
    mask = distance > 0.3
    mean_color = video[mask].mean(axis=0) if mask.any() else bg
    names = list(COLORS)
    palette = np.asarray([COLORS[n] for n in names])
    color = names[int(np.argmin(np.linalg.norm(palette - mean_color, axis=-1)))]
    return ClipMeasure(color=color, direction=direction, displacement=(dy, dx), foreground=share)
