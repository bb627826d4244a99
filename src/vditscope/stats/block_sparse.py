"""Block-sparse attention: the structured windows and a pooled block selection, executed by skipping
whole key blocks with PyTorch FlexAttention (compiled), so a sparsity plan saves time.

Which key blocks a query block computes is decided at block level, then handed to FlexAttention as a
``BlockMask`` built directly from the block indices (milliseconds; no mask function evaluated over
N x N). Inside the kept blocks a token-level mask function keeps the windows exact, so the output
equals ``structured_attention`` (the dense masked softmax) up to float rounding. The methods:

- ``spatial``, ``temporal``, ``tiles``, ``svg``: the windows of ``structured.py``; a block pair is
  kept when the bounding boxes (frame, row, column) of their video tokens lie within the window.
- ``blocks``: per query block, the key blocks that hold mass ``block_mass`` of the block's mean
  query (softmax over all keys, summed per key block), in the spirit of Sparse VideoGen2 and
  XAttention; the query's own block, every block with a non-video (text) token and the blocks of
  sink keys (estimated mass >= SINK_RATIO x uniform) are always kept. No token mask inside them.

Non-video queries (text in joint attention) see every key, as in ``structured.py``. These are
accelerations; the exact token-level bottom-k and top-p of ``sparsify.py`` stay the measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from ..layout import TokenLayout
from ..thresholds import SINK_RATIO
from .sparsify import SparsityStats, check_sparsity
from .streaming import check_attention_inputs, checked_scale
from .structured import DEFAULT_WINDOWS, check_window, svg_choice, token_coordinates

BLOCK_SIZE = 128
BLOCK_METHODS = ("spatial", "temporal", "tiles", "svg", "blocks")
DEFAULT_BLOCK_MASS = 0.9
# frames are padded to whole blocks only when that adds at most this share of their tokens
MAX_PADDING = 0.25
# The masked reference (and the dense log-sum-exp of the dropped mass) runs in query chunks of this many scores.
LSE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class BlockSelection:
    """Per query head, which key blocks each query block computes, and the window kept inside them.

    ``keep`` (H, Qb, Kb) bool over the blocks of the ``arrangement``; ``windows`` (H, 3) half-widths
    of the token-level window, or None (every token of a kept block); ``kinds`` the method per head
    (svg resolves to spatial/temporal).
    """

    keep: torch.Tensor
    windows: torch.Tensor | None
    kinds: list[str]
    block: int = BLOCK_SIZE
    arrangement: Arrangement | None = None  # None: tokens in sequence order, unpadded
    full: torch.Tensor | None = None  # (H, Qb, Kb) kept pairs that need no token-level mask

    @property
    def density(self) -> torch.Tensor:
        """(H,) share of the block pairs computed."""
        return self.keep.float().mean(dim=(1, 2))


@dataclass
class FlexTimings:
    """Seconds spent compiling FlexAttention (first call of each input signature) and running it."""

    compile_s: float = 0.0
    run_s: float = 0.0
    calls: int = 0
    signatures: set[tuple[Any, ...]] = field(default_factory=set)


FLEX_TIMINGS = FlexTimings()


def check_block_method(kind: str, window: tuple[int, int, int] | None, block_mass: float | None) -> None:
    """ValueError unless ``kind`` is a block method with a fitting window or block mass."""
    if kind not in BLOCK_METHODS:
        raise ValueError(f"unknown block method {kind!r}; choose one of {', '.join(BLOCK_METHODS)}")
    if kind == "blocks":
        if window is not None:
            raise ValueError("the blocks method selects key blocks by mass; it takes no window")
        if block_mass is not None and not 0.0 < block_mass <= 1.0:
            raise ValueError(f"block_mass must be in (0, 1], got {block_mass}")
    else:
        if block_mass is not None:
            raise ValueError("block_mass goes with the blocks method, not with a window")
        check_window(kind, window)


def num_blocks(num_tokens: int, block: int) -> int:
    return -(-num_tokens // block)


@dataclass(frozen=True)
class Arrangement:
    """Where each token sits in the sequence FlexAttention computes.

    Windows use frame-aligned blocks: the tokens before the video and every frame are padded to whole
    blocks (a frame of 30 x 52 = 1,560 tokens fills 13 blocks of 128, the last one partly), so no block
    holds two frames and a window keeps whole rows of blocks: the same-frame window keeps one block
    row per frame, the same-position window one block per frame. Padding keys are masked out.
    ``positions`` (N,) the padded position of each token; ``length`` P; ``table`` (5, nb * block):
    real, video, frame, row, column of each padded position (0 for padding).
    """

    positions: torch.Tensor
    length: int
    table: torch.Tensor

    @property
    def padded(self) -> bool:
        return self.length != self.positions.numel()


@lru_cache(maxsize=16)
def arrangement(layout: TokenLayout, num: int, block: int, aligned: bool = True) -> Arrangement:
    """The frame-aligned arrangement of a sequence (``aligned``), or the identity (sequence order)."""
    index = torch.arange(num)
    if aligned:
        whole = lambda n: num_blocks(n, block) * block  # noqa: E731
        start, hw, frames = whole(layout.video_start), layout.tokens_per_frame, layout.frames
        rel = index - layout.video_start
        frame_pos = start + torch.div(rel, hw, rounding_mode="floor") * whole(hw) + rel % hw
        after = index - layout.video_stop + start + frames * whole(hw)
        positions = torch.where(rel < 0, index, torch.where(rel < layout.num_video, frame_pos, after))
        length = int(positions[-1]) + 1
    else:
        positions, length = index, num
    is_video, frame, y, x = token_coordinates(layout, num, torch.device("cpu"))
    table = torch.zeros(5, num_blocks(length, block) * block, dtype=torch.long)
    table[:, positions] = torch.stack([torch.ones_like(index), is_video.long(), frame, y, x])
    return Arrangement(positions, length, table)


@lru_cache(maxsize=16)
def _block_boxes(layout: TokenLayout, num: int, block: int, aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of the arrangement: (has a non-video token, has a video token, has no padding)
    (3, nb) bool, and the bounding box of its video tokens (8, nb): frame, row, column and position in
    the frame (row x width + column), minima then maxima."""
    table = arrangement(layout, num, block, aligned).table
    nb = table.shape[1] // block
    real, video = table[0].bool().view(nb, block), table[1].bool().view(nb, block)
    position = table[3] * layout.width + table[4]
    coords = torch.cat([table[2:], position[None]]).float().view(4, nb, block)
    big = torch.tensor(float(1 << 30))
    low = torch.where(video, coords, big).amin(dim=2)
    high = torch.where(video, coords, -big).amax(dim=2)
    flags = torch.stack([(real & ~video).any(1), video.any(1), real.all(1)])
    return flags, torch.cat([low, high]).long()


@lru_cache(maxsize=16)
def window_blocks(
    layout: TokenLayout, num: int, window: tuple[int, int, int], block: int, aligned: bool = True
) -> torch.Tensor:
    """(Qb, Kb) bool over the arrangement's blocks: the pairs that may hold a (query, key) pair visible
    under the window (a superset; the token-level mask inside the blocks makes the result exact)."""
    flags, box = _block_boxes(layout, num, block, aligned)
    other, video = flags[0], flags[1]
    inside = video[:, None] & video[None, :]
    # |d position| <= wy * width + wx follows from the window: it tells apart blocks of the same rows
    halves = (*window, min(window[1] * layout.width + window[2], layout.tokens_per_frame))
    for dim, half in enumerate(halves):
        low, high = box[dim], box[dim + 4]
        gap = torch.maximum(low[None, :] - high[:, None], low[:, None] - high[None, :]).clamp(min=0)
        inside &= gap <= half
    return inside | other[:, None] | other[None, :]


@lru_cache(maxsize=16)
def window_full_blocks(
    layout: TokenLayout, num: int, window: tuple[int, int, int], block: int, aligned: bool = True
) -> torch.Tensor:
    """(Qb, Kb) bool: the pairs where every query sees every key (no padding key; text queries, text
    keys, or video blocks whose farthest pair lies inside the window): FlexAttention skips the
    token-level mask there."""
    flags, box = _block_boxes(layout, num, block, aligned)
    other, video, whole = flags
    video_only, other_only = video & ~other, other & ~video
    inside = video_only[:, None] & video_only[None, :]
    for dim, half in enumerate(window):
        low, high = box[dim], box[dim + 4]
        farthest = torch.maximum(high[None, :] - low[:, None], high[:, None] - low[None, :])
        inside &= farthest <= half
    return whole[None, :] & (inside | other_only[:, None] | (other_only & whole)[None, :])


def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layout: TokenLayout,
    kind: str,
    window: tuple[int, int, int] | None,
    scale: float,
    block_mass: float | None,
    block: int = BLOCK_SIZE,
) -> BlockSelection:
    """The block selection of one self-attention call of q (1, H, N, D) (``scale`` already divided by
    any temperature)."""
    heads, num = q.shape[1], k.shape[2]
    if kind == "blocks":
        keep = mass_blocks(q, k, layout, scale, DEFAULT_BLOCK_MASS if block_mass is None else block_mass, block)
        return BlockSelection(keep, None, ["blocks"] * heads, block, arrangement(layout, num, block, aligned=False))
    if kind == "svg":
        kinds = svg_choice(q, k, v, layout, scale)
        windows = [DEFAULT_WINDOWS[name] for name in kinds]
    else:
        full = check_window(kind, window)
        kinds, windows = [kind] * heads, [full] * heads
    aligned = frame_alignment_pays(layout, block)
    keep = torch.stack([window_blocks(layout, num, tuple(w), block, aligned) for w in windows]).to(q.device)
    full = torch.stack([window_full_blocks(layout, num, tuple(w), block, aligned) for w in windows]).to(q.device)
    windows_t = torch.tensor(windows, dtype=torch.int64, device=q.device)
    return BlockSelection(keep, windows_t, kinds, block, arrangement(layout, num, block, aligned), full & keep)


def frame_alignment_pays(layout: TokenLayout, block: int) -> bool:
    """Whether frames are padded to whole blocks: when that adds at most MAX_PADDING of a frame (Wan at
    480 x 832: 1,560 -> 1,664 tokens); small frames (64 tokens in a 128 block) stay in sequence order."""
    hw = layout.tokens_per_frame
    return num_blocks(hw, block) * block - hw <= MAX_PADDING * hw


def mass_blocks(
    q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, scale: float, block_mass: float, block: int
) -> torch.Tensor:
    """(H, Qb, Kb) bool: per query block, the fewest key blocks whose mass reaches ``block_mass`` (all of them at
    1), with the diagonal, non-video and sink blocks always kept.

    The mass is estimated with the block's mean query against every key (softmax over the keys,
    summed per key block): pooling only the queries keeps single strong keys visible, at a cost of
    N / block rows of scores. A sink is a key whose estimated mass, averaged over the query blocks,
    is at least SINK_RATIO times the uniform share."""
    heads, num = q.shape[1], k.shape[2]
    nb = num_blocks(num, block)
    if block_mass >= 1.0:  # every block: float32 sums reach 1 before the smallest blocks of a sharp head
        return torch.ones(heads, nb, nb, dtype=torch.bool, device=q.device)
    group = heads // k.shape[1]
    pooled_q = _pool(q[0].float(), block)
    chosen = torch.zeros(heads, nb, nb, dtype=torch.bool, device=q.device)
    for h in range(heads):  # one head at a time: (Qb, N) scores are 176 MB at 75k tokens
        probs = torch.softmax(pooled_q[h] @ k[0, h // group].float().t() * scale, dim=-1)  # (Qb, N)
        sinks = probs.mean(dim=0) >= SINK_RATIO / num  # (N,)
        per_block = torch.nn.functional.pad(probs, (0, nb * block - num)).view(nb, nb, block).sum(-1)
        ordered, order = per_block.sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # mass of the larger blocks before each one
        chosen[h].scatter_(-1, order, before < block_mass)
        chosen[h] |= torch.nn.functional.pad(sinks, (0, nb * block - num)).view(nb, block).any(-1)[None, :]
    other = _block_boxes(layout, num, block, False)[0][0].to(q.device)
    chosen |= other[None, None, :] | other[None, :, None]
    chosen |= torch.eye(nb, dtype=torch.bool, device=q.device)[None]
    return chosen


def _pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of tokens of x (H, N, D): (H, nb, D)."""
    heads, num, dim = x.shape
    nb = num_blocks(num, block)
    padded = torch.nn.functional.pad(x, (0, 0, 0, nb * block - num)).view(heads, nb, block, dim)
    counts = torch.full((nb,), float(block), device=x.device)
    counts[-1] = num - block * (nb - 1)
    return padded.sum(dim=2) / counts[None, :, None]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layout: TokenLayout,
    kind: str,
    window: tuple[int, int, int] | None = None,
    scale: float | None = None,
    temperature: float = 1.0,
    block_mass: float | None = None,
    measure: bool = True,
    backend: str = "flex",
    block: int = BLOCK_SIZE,
) -> tuple[torch.Tensor, SparsityStats, list[str]]:
    """Self-attention of q, k, v (1, H, N, D) computing only the selected blocks.

    ``backend`` "flex" runs compiled FlexAttention; "torch" the same selection as a dense masked
    softmax in query chunks (the exact reference, slow). Returns (out, SparsityStats, kinds per head):
    ``entries_dropped`` is exact; ``mass_dropped`` (the dense softmax mass outside the kept keys) is
    measured only with ``measure`` (it costs a dense pass) and is NaN otherwise."""
    check_attention_inputs(q, k, v)
    check_sparsity(0.0, None, temperature)
    check_block_method(kind, window, block_mass)
    if q.shape[0] != 1:
        raise ValueError("block_sparse_attention takes one batch element at a time")
    num = k.shape[2]
    if q.shape[2] != num:
        raise ValueError("block-sparse methods describe self-attention: queries and keys must be the same sequence")
    if backend not in ("flex", "torch"):
        raise ValueError(f"backend must be flex or torch, got {backend!r}")
    layout.check_fits(num)
    scale = checked_scale(scale, q.shape[-1]) / temperature
    selection = select_blocks(
        q, k, v, layout=layout, kind=kind, window=window, scale=scale, block_mass=block_mass, block=block
    )
    lse = dense = None
    if backend == "flex":
        out = flex_block_attention(q, k, v, selection, scale)
        if measure:
            _, lse, dense = _masked_reference(q, k, None, selection, layout, scale, measure=True)
    else:
        out, lse, dense = _masked_reference(q, k, v, selection, layout, scale, measure=measure)
    kept = kept_entries(selection, layout, num)
    stats = SparsityStats(
        mass_dropped=torch.full((1, q.shape[1]), math.nan),
        entries_dropped=(1.0 - kept / float(num * num)).float()[None],
    )
    if measure:
        stats["mass_dropped"] = (1.0 - torch.exp(lse.double() - dense.double())).mean(-1).float().cpu()[None]
    return out, stats, selection.kinds


def kept_entries(selection: BlockSelection, layout: TokenLayout, num: int) -> torch.Tensor:
    """(H,) float64: the (query, key) entries each head attends to, counted exactly."""
    if selection.windows is None:
        arranged = selection.arrangement or arrangement(layout, num, selection.block, aligned=False)
        sizes = arranged.table[0].view(-1, selection.block).sum(1).double()  # real tokens per block
        return torch.einsum("hqk,q,k->h", selection.keep.cpu().double(), sizes, sizes)
    return torch.tensor([_window_entries(layout, num, tuple(w.tolist())) for w in selection.windows.cpu()])


def _window_entries(layout: TokenLayout, num: int, window: tuple[int, int, int]) -> float:
    """Visible entries under a window: each video query sees the keys of its separable window box
    plus every non-video key; a non-video query sees every key."""
    total = 1.0
    for size, half in zip(layout.grid, window, strict=True):
        index = torch.arange(size)
        total *= float(((index[:, None] - index[None, :]).abs() <= half).sum())
    non_video = num - layout.num_video
    return total + layout.num_video * non_video + non_video * num


def _window_mask_mod(table: torch.Tensor, windows: torch.Tensor) -> Callable[..., torch.Tensor]:
    """FlexAttention mask function over an arrangement's ``table`` (real, video, frame, row, column):
    True where the query sees the key under its head's window; padding keys are never seen."""
    real, video, frame, y, x = table[0], table[1], table[2], table[3], table[4]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        inside = (frame[q_idx] - frame[kv_idx]).abs() <= windows[h, 0]
        inside = inside & ((y[q_idx] - y[kv_idx]).abs() <= windows[h, 1])
        inside = inside & ((x[q_idx] - x[kv_idx]).abs() <= windows[h, 2])
        return (real[kv_idx] != 0) & ((video[q_idx] == 0) | (video[kv_idx] == 0) | inside)

    return mask_mod


def build_block_mask(selection: BlockSelection, length: int) -> Any:
    """A FlexAttention BlockMask from the selection's block indices, for a sequence of ``length`` (the
    arrangement's): the token-level window (and the padding mask) runs in the partial blocks, not in
    the full ones."""
    from torch.nn.attention.flex_attention import BlockMask

    keep, full = selection.keep, selection.full
    mask_mod = None
    if selection.windows is not None:
        table = selection.arrangement.table.to(keep.device)  # type: ignore[union-attr]
        mask_mod = _window_mask_mod(table, selection.windows)
    if full is None or not (keep & ~full).any():  # Inductor's CPU code fails with no partial block at all
        full = torch.zeros_like(keep)
    partial = keep & ~full
    return BlockMask.from_kv_blocks(
        *_block_indices(partial),
        *_block_indices(full),
        BLOCK_SIZE=selection.block,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
        compute_q_blocks=False,
    )


def _block_indices(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts (1, H, Qb), indices (1, H, Qb, Kb)) int32 of the chosen key blocks of each query block."""
    counts = chosen.sum(-1, dtype=torch.int32)[None].contiguous()
    indices = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True).to(torch.int32)[None].contiguous()
    return counts, indices


@lru_cache(maxsize=1)
def compiled_flex() -> Callable[..., Any]:
    """FlexAttention compiled once per process (Inductor's on-disk cache keeps later processes fast)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    scale: float,
) -> torch.Tensor:
    """The output (1, H, N, Dv) of compiled FlexAttention over the selection (tokens moved to their
    padded positions and back when the arrangement pads). The first call of an input signature
    compiles; it is timed apart (``FLEX_TIMINGS``) by a warm-up call."""
    arranged = selection.arrangement
    if arranged is not None and arranged.padded:
        positions = arranged.positions.to(q.device)
        q, k, v = (_scatter(t, positions, arranged.length) for t in (q, k, v))
    mask = build_block_mask(selection, q.shape[2])
    flex = compiled_flex()
    gqa = q.shape[1] != k.shape[1]
    windowed = selection.windows is not None
    signature = (tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, q.device.type, gqa, windowed)
    if signature not in FLEX_TIMINGS.signatures:
        start = time.perf_counter()
        flex(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
        FLEX_TIMINGS.compile_s += time.perf_counter() - start
        FLEX_TIMINGS.signatures.add(signature)
    start = time.perf_counter()
    out = flex(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
    FLEX_TIMINGS.run_s += time.perf_counter() - start
    FLEX_TIMINGS.calls += 1
    if arranged is not None and arranged.padded:
        out = out[:, :, positions]
    return out


def _scatter(x: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
    """x (1, H, N, D) with its tokens at ``positions`` of a zero sequence of ``length``."""
    padded = x.new_zeros(x.shape[0], x.shape[1], length, x.shape[3])
    padded[:, :, positions] = x
    return padded


def token_mask(selection: BlockSelection, layout: TokenLayout, num: int, head: int, rows: torch.Tensor) -> torch.Tensor:
    """(len(rows), N) bool: the keys the rows ``rows`` of one head see under the selection."""
    arranged = selection.arrangement or arrangement(layout, num, selection.block, aligned=False)
    positions = arranged.positions.to(rows.device)
    block_of = torch.div(positions, selection.block, rounding_mode="floor")
    visible = selection.keep[head][block_of[rows][:, None], block_of[None, :]]
    if selection.windows is not None:
        mask_mod = _window_mask_mod(arranged.table.to(rows.device), selection.windows)
        visible &= mask_mod(None, head, positions[rows][:, None], positions[None, :])
    return visible


def _masked_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    selection: BlockSelection,
    layout: TokenLayout,
    scale: float,
    measure: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """The selection as a dense masked softmax in float32 query chunks: (out, or None without v, the
    natural-log lse (H, N) of the kept scores, and with ``measure`` that of all scores, from the same
    score chunks: together they give the mass dropped)."""
    heads, num = q.shape[1], k.shape[2]
    group = heads // k.shape[1]
    out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device) if v is not None else None
    lse = torch.empty(heads, num, dtype=torch.float32, device=q.device)
    dense = torch.empty_like(lse) if measure else None
    chunk = max(16, LSE_CHUNK_ELEMENTS // max(num, 1))
    for h in range(heads):
        keys_t = k[0, h // group].float().t()
        for r0 in range(0, num, chunk):
            rows = torch.arange(r0, min(num, r0 + chunk), device=q.device)
            logits = (q[0, h, rows].float() @ keys_t) * scale
            if dense is not None:
                dense[h, rows] = torch.logsumexp(logits, -1)
            logits = logits.masked_fill(~token_mask(selection, layout, num, h, rows), -math.inf)
            lse[h, rows] = torch.logsumexp(logits, -1)
            if out is not None:
                out[0, h, rows] = (torch.softmax(logits, -1) @ v[0, h // group].float()).to(out.dtype)
    return out, lse, dense
