"""Procedural captioned videos: a coloured shape moving across a plain background.

Deterministic by seed, made in code (no download), captioned
"a {color} {shape} moving {direction} on a {background} background". The tiny models that
ship with vditscope are trained on it, and their evaluation reads colour and motion back
from generated frames with :func:`measure_clip`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
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


@dataclass(frozen=True)
class ClipStyle:
    """How a clip moves and what it moves over.

    ``start``: "edge" (from near one side across 70-85% of the frame: where the shape is tells the direction, which
    a model with relative positions only cannot use), "centre" (from the frame's centre, so that the first frame
    is the same for every direction and only the motion tells it) or "wrap" (from anywhere, on a frame that wraps
    around like a torus: every place and motion is as likely as any other, which is all that a model that knows
    relative positions only, such as Wan with its rotary embeddings, can learn). ``trail``: faded copies of the
    shape behind it (0: none), as motion blur leaves in real video, so that the direction shows in every frame.
    ``texture``: amplitude of a static pattern on the background (0: plain), which the frames share, as real scenes do;
    ``texture_cycles``: its highest frequency, in cycles per frame. ``flicker``: each frame's brightness moves by
    up to this much (uniform, the whole frame), as a camera's exposure does, so that a frame's own pixels tell
    what the other frames cannot. ``drift``: the background pattern moves with the shape, as a scene does when
    the camera pans, so that the direction shows everywhere in the frame and not only where the shape is.
    ``grain``: amplitude of a static grey grain on the background, one random value per pixel (uniform, 0: none),
    which the frames share (it stays with ``drift``, as a sensor's fixed pattern does): unlike the smooth pattern,
    a pixel's grain cannot be read from its neighbours, only from the same place in the other frames, which is
    what a temporal attention head does.
    ``scale``: the shape's side as a share of the frame's. ``travel``: pixels a centre or wrap clip travels (within
    ``TRAVEL_JITTER``); a small shape that travels several times its size shows its direction only across frames.
    """

    start: str = "edge"
    trail: int = 0
    texture: float = 0.0
    texture_cycles: int = 3
    flicker: float = 0.0
    drift: bool = False
    grain: float = 0.0
    scale: float = 0.34
    travel: float = 10.5


LEGACY_STYLE = ClipStyle()  # the clips tiny-wan and tiny-cogvideox trained on (saved before styles existed)
# the styles `train-tiny --clips` offers: the shipped models' and those that issue 17's experiments tried. `stride`
# is `wrap` travelling 16 px: over a 9-frame clip (`train-tiny --frames 9`), 2 px per frame, so one video token
# of the tiny models (4 px: the VAE's 2 x 2 pixels times the transformer's 2 x 2 patch) per latent frame (2 frames),
# a step that one attention head can follow; the others move a fraction of a token per latent frame
CLIP_STYLES = {
    "edge": LEGACY_STYLE,
    "centre": ClipStyle(start="centre", trail=3, texture=0.1, texture_cycles=6, flicker=0.05),
    "wrap": ClipStyle(start="wrap", trail=3, texture=0.1, texture_cycles=6, flicker=0.05),
    "stride": ClipStyle(start="wrap", trail=3, texture=0.1, texture_cycles=6, flicker=0.05, travel=16.0),
    # `edge` starts with `centre`'s trail, pattern and flicker (a model with absolute positions reads the direction
    # from where the shape is; the pattern and the flicker give the head types)
    "scene": ClipStyle(start="edge", trail=3, texture=0.1, texture_cycles=6, flicker=0.05),
    # `scene` over a static per-pixel grain: the shipped tiny-cogvideox-motion's clips (own-frame attention past 2x
    # uniform in a layer)
    "grain": ClipStyle(start="edge", trail=3, texture=0.1, texture_cycles=6, flicker=0.05, grain=0.12),
}
DEFAULT_STYLE = CLIP_STYLES["edge"]  # a TinyConfig's unless told otherwise: the shipped tiny-wan's
TRAIL_SPACING = 2.0  # pixels between the trail's copies
TRAIL_ALPHA = 0.55  # opacity of the first copy; the others fade linearly
CENTRE_JITTER = 1.0  # pixels: the centred start is uniform within this of the centre
TRAVEL_JITTER = 1.0  # pixels: a centre or wrap clip travels ClipStyle.travel give or take this (uniform)
STARTS = ("edge", "centre", "wrap")  # where a clip's motion can start (ClipStyle.start)


def render_clip(
    spec: ClipSpec,
    *,
    frames: int,
    size: int,
    rng: np.random.Generator,
    extent: float | None = None,
    style: ClipStyle = DEFAULT_STYLE,
) -> np.ndarray:
    """Frames (F, size, size, 3) float32 in [0, 1]: the shape moves in its direction (see ``ClipStyle``)."""
    extent = extent if extent is not None else size * style.scale
    box = int(np.ceil(extent)) + 2
    sprite = _shape_mask(spec.shape, box, extent)
    margin = box / 2
    dy, dx = DIRECTIONS[spec.direction]
    cross = rng.uniform(margin, size - margin)  # position across the motion
    if style.start == "edge":
        travel = size - 2 * margin  # from one side to the other
        start = margin + rng.uniform(0, 0.15) * travel
        span = travel * rng.uniform(0.7, 0.85)
        first = start if dx > 0 or dy > 0 else size - start  # the centre along the motion, first frame
    elif style.start == "centre":
        first = size / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
        span = rng.uniform(style.travel - TRAVEL_JITTER, style.travel + TRAVEL_JITTER)
    elif style.start == "wrap":  # anywhere: the frame wraps around, as a torus
        cross, first = rng.uniform(0, size, 2)
        span = rng.uniform(style.travel - TRAVEL_JITTER, style.travel + TRAVEL_JITTER)
    else:
        raise ValueError(f"unknown clip start {style.start!r}; one of {', '.join(STARTS)}")
    sign = dx + dy
    color = np.asarray(COLORS[spec.color], dtype=np.float32)
    background = clip_background(BACKGROUNDS[spec.background], size, style.texture, style.texture_cycles, rng)
    video = np.empty((frames, size, size, 3), dtype=np.float32)
    exposure = rng.uniform(-style.flicker, style.flicker, frames) if style.flicker else np.zeros(frames)
    if style.grain:  # static even when the pattern drifts: the camera's sensor, not the scene
        background = _with_grain(background, rng.uniform(-style.grain, style.grain, (size, size, 1)))
    still = background((0.0, 0.0))
    for t in range(frames):
        moved = sign * span * t / max(frames - 1, 1)
        along = first + moved
        behind_shape = background((moved * dy, moved * dx)) if style.drift else still
        coverage = np.zeros((size, size), dtype=np.float32)
        for k in range(style.trail, -1, -1):  # the trail's copies first, the shape last
            behind = along - sign * k * TRAIL_SPACING
            centre = (cross, behind) if dx else (behind, cross)
            alpha = 1.0 if k == 0 else TRAIL_ALPHA * (1 - (k - 1) / style.trail)
            placed = _wrapped(sprite, centre, size) if style.start == "wrap" else _placed(sprite, centre, size)
            np.maximum(coverage, alpha * placed, out=coverage)
        video[t] = behind_shape + coverage[..., None] * (color - behind_shape)
        if exposure[t]:
            np.clip(video[t] + exposure[t], 0, 1, out=video[t])
    return video


def _placed(sprite: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """The sprite's coverage in a size x size frame with its box centred at (y, x), cut at the edges."""
    box = sprite.shape[0]
    coverage = np.zeros((size, size), dtype=np.float32)
    top, left = round(centre[0] - box / 2), round(centre[1] - box / 2)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + box, size), min(left + box, size)
    if y1 > y0 and x1 > x0:
        coverage[y0:y1, x0:x1] = sprite[y0 - top : y1 - top, x0 - left : x1 - left]
    return coverage


def _wrapped(sprite: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """The sprite's coverage on a frame that wraps around: what leaves one side enters the opposite one."""
    copies = [
        _placed(sprite, (centre[0] + dy, centre[1] + dx), size) for dy in (-size, 0, size) for dx in (-size, 0, size)
    ]
    return np.maximum.reduce(copies)


def clip_background(
    color: tuple[float, float, float], size: int, texture: float, cycles: int, rng: np.random.Generator
) -> Callable[[tuple[float, float]], np.ndarray]:
    """A clip's background as a function of a (dy, dx) shift in pixels, which gives it (size, size, 3) moved that
    far: the plain colour, plus a pattern of amplitude ``texture`` when it is not 0: three random plane waves of up
    to ``cycles`` cycles per frame across (at least cycles - 2 along x), scaled to peak 1 unmoved; whole cycles per
    frame, so that it wraps around when it moves."""
    plain = np.broadcast_to(np.asarray(color, dtype=np.float32), (size, size, 3))
    if texture == 0:
        return lambda _shift: plain
    ys, xs = np.mgrid[:size, :size] / size
    waves = [
        (rng.integers(-cycles, cycles + 1), rng.integers(max(1, cycles - 2), cycles + 1), rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    ]

    def pattern(shift: tuple[float, float]) -> np.ndarray:
        dy, dx = shift[0] / size, shift[1] / size
        return sum(np.cos(2 * np.pi * (ky * (ys - dy) + kx * (xs - dx)) + phase) for ky, kx, phase in waves)

    peak = np.abs(pattern((0.0, 0.0))).max()
    return lambda shift: np.clip(plain + texture * (pattern(shift) / peak).astype(np.float32)[..., None], 0, 1)


def _with_grain(
    background: Callable[[tuple[float, float]], np.ndarray], grain: np.ndarray
) -> Callable[[tuple[float, float]], np.ndarray]:
    """``background`` (a ``clip_background``) with a static ``grain`` (size, size, 1) added, kept in [0, 1]."""
    grain = grain.astype(np.float32)
    return lambda shift: np.clip(background(shift) + grain, 0, 1)


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
    displacement: tuple[float, float]  # (dy, dx) pixels: the shape's shift, first quarter of frames to last
    foreground: float  # mean share of pixels that differ from the background


def prompt_background(prompt: str, settings: dict) -> str | None:
    """The background a shapes caption names, among a model's vocabulary (vditscope.json); None when the
    model has no shapes vocabulary or the prompt names none."""
    backgrounds = settings.get("vocabulary", {}).get("backgrounds", [])
    return next((b for b in backgrounds if f"on a {b} background" in prompt), None)


def shape_weight(video: np.ndarray, background: str) -> np.ndarray:
    """(F, H, W): how far each pixel is from the prompted background, less 0.15 (more than a background
    pattern or flicker of the clip styles moves it), floored at 0."""
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    return np.clip(np.linalg.norm(video - bg, axis=-1) - 0.15, 0, None)


def circular_shift(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """The (dy, dx) in pixels, within half a frame and to a tenth of a pixel or so, that best moves image
    ``first`` onto ``second`` on a frame that wraps around: the peak of their circular cross-correlation, refined
    by a parabola through it and its neighbours. For a shape that does not wrap it is its motion too."""
    correlation = np.fft.ifft2(np.conj(np.fft.fft2(first)) * np.fft.fft2(second)).real
    py, px = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    shift = []
    for line, at in ((correlation[:, px], int(py)), (correlation[py, :], int(px))):  # through the peak, per axis
        below, centre, above = line[(at - 1) % len(line)], line[at], line[(at + 1) % len(line)]
        curvature = below - 2 * centre + above
        offset = 0.5 * (below - above) / curvature if curvature < 0 else 0.0
        shift.append(float((at if at < len(line) / 2 else at - len(line)) + offset))
    return shift[0], shift[1]


def chained_shift(weight: np.ndarray) -> tuple[float, float]:
    """The motion (dy, dx) in pixels of what ``weight`` (F, H, W) shows from its first frame to its last: the sum of
    each frame's ``circular_shift`` onto the next. One frame moves far less than half a frame, so no step wraps
    the wrong way round, which a single shift from the first frames to the last can when the motion nears half a
    frame (a generated 9-frame edge clip moves 12-17 px of 32)."""
    steps = [circular_shift(a, b) for a, b in itertools.pairwise(weight)]
    return float(sum(s[0] for s in steps)), float(sum(s[1] for s in steps))


def shape_track(video: np.ndarray, background: str) -> np.ndarray:
    """Per-frame centroid (y, x) in pixels of what differs from the prompted background: (F, 2)."""
    weight = shape_weight(video, background)  # (F, H, W)
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
    dy, dx = chained_shift(shape_weight(video, background))
    horizontal = "right" if dx > 0 else "left"
    vertical = "down" if dy > 0 else "up"
    direction = horizontal if abs(dx) >= abs(dy) else vertical
    mask = distance > 0.3
    mean_color = video[mask].mean(axis=0) if mask.any() else bg
    names = list(COLORS)
    palette = np.asarray([COLORS[n] for n in names])
    color = names[int(np.argmin(np.linalg.norm(palette - mean_color, axis=-1)))]
    return ClipMeasure(color=color, direction=direction, displacement=(dy, dx), foreground=share)
