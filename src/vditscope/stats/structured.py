"""Structured sparse attention of the published video methods, exact, in query chunks.

A video query keeps the video keys inside a window around it, |df| <= wf frames, |dy| <= wy rows,
|dx| <= wx columns (token units); text keys and every other non-video token stay visible, and
non-video queries see everything. The windows of the methods:

- ``spatial``: the query's own frame (wf = 0, whole frame): the spatial heads of Sparse VideoGen.
- ``temporal``: the query's own position in every frame (wy = wx = 0): its temporal heads.
- ``tiles``: a sliding 3D window (default 1 frame, 2 rows, 2 columns each way), like sliding
  tile attention at token granularity.
- ``svg``: per head, spatial or temporal, whichever reproduces the dense output better on a few
  sampled query rows (Sparse VideoGen's online profiling), decided per call.

A temperature may be combined with a window; bottom-k and top-p are separate methods
(``sparsify.py``).
"""

from __future__ import annotations

import math

import torch

from ..layout import TokenLayout
from .sparsify import SparsityStats, check_sparsity
from .streaming import check_attention_inputs, checked_scale, chunk_rows

MASK_KINDS = ("spatial", "temporal", "tiles", "svg")
WIDE = 1 << 20  # a window half-width that covers any video
DEFAULT_WINDOWS = {"spatial": (0, WIDE, WIDE), "temporal": (WIDE, 0, 0), "tiles": (1, 2, 2)}
SVG_SAMPLE_ROWS = 64
CHUNK_ELEMENTS = 1 << 23


def token_coordinates(layout: TokenLayout, num_tokens: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(is_video, frame, row, column) of every token of the sequence (coordinates 0 outside video)."""
    index = torch.arange(num_tokens, device=device)
    rel = index - layout.video_start
    is_video = (rel >= 0) & (rel < layout.num_video)
    rel = rel.clamp(0, layout.num_video - 1)
    hw = layout.tokens_per_frame
    return is_video, rel // hw, (rel % hw) // layout.width, rel % layout.width


def window_mask(layout: TokenLayout, num_tokens: int, rows: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """Boolean (len(rows), num_tokens), True = visible, for the query indices ``rows``."""
    is_video, frame, y, x = token_coordinates(layout, num_tokens, rows.device)
    wf, wy, wx = window
    q_video, qf, qy, qx = is_video[rows, None], frame[rows, None], y[rows, None], x[rows, None]
    inside = ((frame[None] - qf).abs() <= wf) & ((y[None] - qy).abs() <= wy) & ((x[None] - qx).abs() <= wx)
    return ~q_video | ~is_video[None] | inside


def check_window(kind: str, window: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """Validate a mask kind and window; returns the window to use (None for svg)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    if kind == "svg":
        return None
    window = tuple(window) if window is not None else DEFAULT_WINDOWS[kind]
    if len(window) != 3 or any(int(w) < 0 for w in window):
        raise ValueError(f"a window is three non-negative half-widths (frames, rows, columns), got {window}")
    return tuple(int(w) for w in window)  # type: ignore[return-value]


def svg_choice(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, scale: float, samples: int = SVG_SAMPLE_ROWS
) -> list[str]:
    """Per query head of q (1, H, N, D): "spatial" or "temporal", the mask whose output on evenly
    spaced sampled video query rows is closer (squared error) to dense attention."""
    num = k.shape[2]
    step = max(1, layout.num_video // samples)
    rows = torch.arange(layout.video_start, layout.video_stop, step, device=q.device)[:samples]
    group = q.shape[1] // k.shape[1]
    keys = k.repeat_interleave(group, dim=1).float()
    values = v.repeat_interleave(group, dim=1).float()
    logits = (q[:, :, rows].float() @ keys.transpose(-1, -2)) * scale  # (1, H, s, N)
    dense = torch.softmax(logits, -1) @ values
    errors = {}
    for kind in ("spatial", "temporal"):
        mask = window_mask(layout, num, rows, DEFAULT_WINDOWS[kind])
        out = torch.softmax(logits.masked_fill(~mask, -math.inf), -1) @ values
        errors[kind] = ((out - dense) ** 2).sum((-1, -2))[0]  # (H,)
    return ["spatial" if s <= t else "temporal" for s, t in zip(errors["spatial"], errors["temporal"], strict=True)]


def structured_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layout: TokenLayout,
    kind: str,
    window: tuple[int, int, int] | None = None,
    scale: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, SparsityStats, list[str]]:
    """Self-attention of q, k, v (1, H, N, D) under a structured window, exactly, in query chunks.

    Returns (out, SparsityStats with ``mass_dropped`` (the dense softmax mass outside the kept keys,
    mean over queries) and ``entries_dropped`` (share of entries dropped), each (1, H) float32, and
    the window kind used per head (the svg choice, or ``kind`` for every head)."""
    check_attention_inputs(q, k, v)
    check_sparsity(0.0, None, temperature)
    window = check_window(kind, window)
    if q.shape[0] != 1:
        raise ValueError("structured_attention takes one batch element at a time")
    heads, num = q.shape[1], k.shape[2]
    if q.shape[2] != num:
        raise ValueError("structured masks describe self-attention: queries and keys must be the same sequence")
    layout.check_fits(num)
    scale = checked_scale(scale, q.shape[-1]) / temperature
    kinds = svg_choice(q, k, v, layout, scale) if kind == "svg" else [kind] * heads
    windows = [DEFAULT_WINDOWS[name] if kind == "svg" else window for name in kinds]
    group = heads // k.shape[1]
    chunk = chunk_rows(chunk_size, max(16, min(1024, CHUNK_ELEMENTS // max(num, 1))), num)
    out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
    mass = torch.zeros(1, heads, dtype=torch.float64, device=q.device)
    dropped = torch.zeros(1, heads, dtype=torch.float64, device=q.device)
    for h in range(heads):
        keys_t = k[0, h // group].float().t()
        values = v[0, h // group].float()
        for r0 in range(0, num, chunk):
            rows = torch.arange(r0, min(num, r0 + chunk), device=q.device)
            mask = window_mask(layout, num, rows, windows[h])
            logits = (q[0, h, r0 : r0 + len(rows)].float() @ keys_t) * scale
            masked = logits.masked_fill(~mask, -math.inf)
            kept = torch.logsumexp(masked, -1) - torch.logsumexp(logits, -1)
            mass[0, h] += (1 - torch.exp(kept)).double().sum()
            dropped[0, h] += (num - mask.sum(-1)).double().sum()
            out[0, h, r0 : r0 + len(rows)] = (torch.softmax(masked, -1) @ values).to(out.dtype)
    stats = SparsityStats(mass_dropped=(mass / num).float(), entries_dropped=(dropped / (num * num)).float())
    return out, stats, kinds
