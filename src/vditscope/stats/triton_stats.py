"""The statistics of ``attention_stats`` from Triton kernels: one sweep over the key blocks per query block.

Pass 1 finds each row's log-sum-exp (or FlashAttention returns it with the output, on CUDA); pass 2 sweeps
the keys once with the normalized probabilities and accumulates every exact statistic in float32, with
atomics into per-head buffers: no N x N map is ever held. The top-k mass keeps the torch path's estimator
(exact rows in torch, control variates from the kernels' per-row entropy and row sums). On CPU tensors the
kernels run in Triton's interpreter (TRITON_INTERPRET=1), which is how they are tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import torch

from ..layout import TokenLayout
from .basics import (
    LN2,
    LOG2E,
    MASKED,
    AttentionStats,
    check_attention_inputs,
    checked_chunk_size,
    checked_scale,
    default_chunk_size,
    frame_distance_profile,
    offset_index,
    prepare_mask,
    ring_profile,
)
from .top_mass import TOP_FRACTIONS, estimate_mean_top_mass, exact_top_mass, sampled_rows

# (query rows, key columns) per kernel block: compiled on a GPU, and in the interpreter (small, so that
# the tests' odd sizes span several blocks and end in partial ones).
GPU_BLOCKS = (64, 64)
HALF = (torch.float16, torch.bfloat16)
INTERPRET_BLOCKS = (32, 32)
# warps per program of (pass 1, pass 2); checked by compiling for sm_90 without a GPU: pass 2 with 8 warps
# spills least (the three-way split of the category products below beats tf32x3 there), not yet timed
GPU_WARPS, GPU_STAGES = (4, 8), 2
# In the interpreter, emulate the GPU's three-way bfloat16 split of the category products (tests), or not.
SPLIT_IN_INTERPRETER = True


def interpret_mode() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter, read now (as Triton reads its knob)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def triton_available() -> bool:
    """Whether ``import triton`` works here (vditscope itself never needs it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_triton_device(q: torch.Tensor) -> None:
    """ValueError unless the Triton kernels can run on ``q``: a CUDA tensor, or the interpreter is on."""
    if q.device.type != "cuda" and not interpret_mode():
        raise ValueError(
            f"backend='triton' on a {q.device.type} tensor needs TRITON_INTERPRET=1 (Triton's interpreter); "
            "use a CUDA tensor or backend='torch'"
        )


@lru_cache(maxsize=2)
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """(pass 1, pass 2) kernels, interpreted or compiled; decided per call rather than at import, so a
    TRITON_INTERPRET set after triton was first imported is still honoured."""
    from . import triton_kernels as kernels

    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(kernels.lse_kernel), InterpretedFunction(kernels.stats_kernel)
    from triton.runtime.jit import JITFunction

    return JITFunction(kernels.lse_kernel), JITFunction(kernels.stats_kernel)


@cache
def _interpreted(function: Any) -> Any:
    """One interpreter wrapper per compiled-mode Triton library function."""
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(function.fn)


@contextmanager
def _interpretable_library(interpret: bool) -> Iterator[None]:
    """Triton's own library functions (``tl.zeros``, ``tl.sum``, ...) are decorated when triton is first
    imported; if that was before TRITON_INTERPRET was set, the interpreter cannot call them. Swap in
    interpreter wrappers for the duration of a launch (restored after), as the interpreter patches ``tl``."""
    if not interpret:
        yield
        return
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    modules = [tl, tl.standard, tl.core, tl.math]
    saved = [(m, name, f) for m in modules for name, f in list(vars(m).items()) if isinstance(f, JITFunction)]
    for module, name, function in saved:
        setattr(module, name, _interpreted(function))
    try:
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def _pow2(n: int, floor: int = 16) -> int:
    """Smallest power of two >= max(n, floor) (block shapes must be powers of two, dots at least 16)."""
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


@dataclass
class _Launch:
    """What both kernels share: inputs, mask, sizes, block shapes and compile-time switches."""

    q: torch.Tensor
    k: torch.Tensor
    mask: torch.Tensor
    mask_strides: tuple[int, int, int, int]
    mask_kind: int
    mask_row_bcast: bool
    is_causal: bool
    qk_scale: float
    group: int
    interpret: bool
    block_m: int
    block_n: int

    @property
    def grid(self) -> tuple[int, int]:
        return (-(-self.q.shape[2] // self.block_m), self.q.shape[0] * self.q.shape[1])

    def common(self, kernel: int) -> dict[str, Any]:
        """Keyword arguments that configure both kernels alike (``kernel``: 0 for pass 1, 1 for pass 2)."""
        upcast = self.interpret or self.q.dtype not in HALF
        options: dict[str, Any] = {
            "MASK_KIND": self.mask_kind,
            "MASK_ROW_BCAST": self.mask_row_bcast,
            "IS_CAUSAL": self.is_causal,
            "UPCAST": upcast,
            "QK_PRECISION": "ieee" if upcast else "tf32",
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "BLOCK_D": _pow2(self.q.shape[3]),
        }
        if not self.interpret:
            options.update(num_warps=GPU_WARPS[kernel], num_stages=GPU_STAGES)
        return options


def _make_launch(
    q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, scale: float, interpret: bool
) -> _Launch:
    """Mask as the kernels read it (uint8 for bool, float32 log2 units for additive; stride 0 where broadcast)."""
    batch, q_heads, num_q, _ = q.shape
    mask = prepare_mask(attn_mask, batch, q_heads, num_q, k.shape[2])
    kind, strides, row_bcast = 0, (0, 0, 0, 0), False
    if mask is None:
        mask = torch.zeros(1, dtype=torch.float32, device=q.device)
    else:
        if mask.dtype == torch.bool:
            kind, mask = 1, mask.view(torch.uint8)
        else:
            kind = 2
        strides, row_bcast = tuple(mask.stride()), mask.stride(2) == 0
    block_m, block_n = INTERPRET_BLOCKS if interpret else GPU_BLOCKS
    return _Launch(
        q,
        k,
        mask,
        strides,
        kind,
        row_bcast,
        is_causal,
        scale * LOG2E,
        q_heads // k.shape[1],
        interpret,
        block_m,
        block_n,
    )


def _lse_pass(launch: _Launch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1: (lse2, row max, visible keys) per row, each (B, Hq, Nq)."""
    q, k = launch.q, launch.k
    batch, q_heads, num_q, dim = q.shape
    lse2 = torch.empty(batch, q_heads, num_q, dtype=torch.float32, device=q.device)
    row_max = torch.empty_like(lse2)
    visible = torch.empty(batch, q_heads, num_q, dtype=torch.int32, device=q.device)
    kernel = _kernels(launch.interpret)[0]
    with _interpretable_library(launch.interpret):
        kernel[launch.grid](
            q, k, launch.mask, lse2, row_max, visible,
            *q.stride(), *k.stride(), *launch.mask_strides,
            q_heads, launch.group, num_q, k.shape[2], dim, launch.qk_scale,
            **launch.common(0),
        )  # fmt: skip
    return lse2, row_max, visible


def _flash_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(output, lse2) from FlashAttention's forward on CUDA when it applies (no mask, equal heads, half
    inputs, causal only when square); None otherwise or when the call fails, so pass 1 runs instead."""
    if q.device.type != "cuda" or interpret_mode() or attn_mask is not None or q.dtype not in HALF:
        return None
    if q.shape[1] != k.shape[1] or q.shape[-1] != v.shape[-1] or (is_causal and q.shape[2] != k.shape[2]):
        return None
    try:
        result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, is_causal, False, scale=scale)
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    out, lse = result[0], result[1]
    if tuple(lse.shape) != tuple(q.shape[:3]) or out.shape != q.shape:
        return None
    return out, (lse.to(torch.float32) * LOG2E).contiguous()


@dataclass
class _Buffers:
    """Per-head running sums the statistics kernel adds into (float32, zero-initialized)."""

    entropy: torch.Tensor
    received: torch.Tensor
    frame_map: torch.Tensor | None = None
    token_map: torch.Tensor | None = None
    text_mass: torch.Tensor | None = None
    text_received: torch.Tensor | None = None
    position: torch.Tensor | None = None
    space: torch.Tensor | None = None
    tile_size: int = 0


def _make_buffers(
    q: torch.Tensor, num_k: int, layout: TokenLayout | None, spatial: bool, map_tiles: int | None
) -> _Buffers:
    """Zeroed accumulators for every statistic the call asks for."""
    batch, heads, num_q = q.shape[:3]

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(batch, heads, *shape, dtype=torch.float32, device=q.device)

    bufs = _Buffers(entropy=zeros(num_q), received=zeros(num_k))
    if layout is not None:
        bufs.frame_map, bufs.text_mass, bufs.position = zeros(layout.frames, layout.frames), zeros(), zeros()
        if map_tiles is not None:
            bufs.tile_size, tiles = layout.tiles(map_tiles)
            bufs.token_map = zeros(tiles, tiles)
        if layout.text is not None:
            bufs.text_received = zeros(layout.num_text)
        if spatial:
            bufs.space = zeros(layout.tokens_per_frame, layout.tokens_per_frame)
    return bufs


def _stats_pass(
    launch: _Launch,
    v: torch.Tensor,
    lse2: torch.Tensor,
    bufs: _Buffers,
    layout: TokenLayout | None,
    out: torch.Tensor | None,
    want_max: bool,
) -> torch.Tensor | None:
    """Pass 2 over every (query block, batch x head); returns the row maxima when ``want_max``."""
    q, k = launch.q, launch.k
    _, q_heads, num_q, dim = q.shape
    dummy = torch.zeros(1, dtype=torch.float32, device=q.device)
    row_max = torch.empty_like(lse2) if want_max else dummy
    tiles = bufs.token_map.shape[-1] if bufs.token_map is not None else 0
    if layout is not None:
        text = layout.text or (0, 0)
        geometry = (layout.video_start, layout.num_video, layout.tokens_per_frame, layout.frames, *text)
        categories = layout.frames + 1 + tiles
    else:
        geometry, categories = (0, 0, 1, 0, 0, 0), 1
    kernel = _kernels(launch.interpret)[1]

    def buf(t: torch.Tensor | None) -> torch.Tensor:
        return dummy if t is None else t

    out_strides = out.stride() if out is not None else (0, 0, 0, 0)
    with _interpretable_library(launch.interpret):
        kernel[launch.grid](
            q, k, v, launch.mask, lse2, bufs.entropy, row_max, buf(out), bufs.received,
            buf(bufs.frame_map), buf(bufs.token_map), buf(bufs.text_mass), buf(bufs.text_received),
            buf(bufs.position), buf(bufs.space),
            *q.stride(), *k.stride(), *v.stride(), *launch.mask_strides, *out_strides,
            q_heads, launch.group, num_q, k.shape[2], dim, v.shape[-1], launch.qk_scale,
            *geometry, max(bufs.tile_size, 1), tiles,
            STAT_PRECISION="ieee" if launch.interpret else "tf32x3",
        SPLIT_DOT=(2 if SPLIT_IN_INTERPRETER else 0) if launch.interpret else 1,
            WANT_MAX=want_max,
            WANT_OUT=out is not None,
            LAYOUT=layout is not None,
            HAS_TEXT=layout is not None and layout.text is not None,
            SPATIAL=bufs.space is not None,
            TILES=bufs.token_map is not None,
            BLOCK_DV=_pow2(v.shape[-1]),
            BLOCK_C=_pow2(categories),
            **launch.common(1),
        )  # fmt: skip
    return row_max if want_max else None


def _finish(bufs: _Buffers, layout: TokenLayout | None) -> AttentionStats:
    """Running sums to means, as ``streaming._finish_head`` does, and the derived profiles."""
    stats = AttentionStats(entropy=bufs.entropy, received=bufs.received)
    if layout is None:
        return stats
    stats["frame_map"] = bufs.frame_map.div_(layout.tokens_per_frame)
    stats["text_mass"] = bufs.text_mass.div_(layout.num_video)
    stats["locality_time"] = frame_distance_profile(bufs.frame_map)
    stats["same_position_mass"] = bufs.position.div_(layout.num_video)
    if bufs.token_map is not None:
        tiles = bufs.token_map.shape[-1]
        rows = torch.full((tiles,), float(bufs.tile_size), device=bufs.token_map.device)
        rows[-1] = layout.num_video - bufs.tile_size * (tiles - 1)
        stats["token_map"] = bufs.token_map.div_(rows[:, None])
    if bufs.text_received is not None:
        stats["text_received"] = bufs.text_received.div_(layout.num_video)
    if bufs.space is not None:
        batch, heads, hw = bufs.space.shape[:3]
        height, width = layout.height, layout.width
        index = offset_index(height, width).to(bufs.space.device)
        flat = torch.zeros(batch * heads, (2 * height - 1) * (2 * width - 1), dtype=torch.float32, device=index.device)
        flat.index_add_(1, index, bufs.space.view(batch * heads, hw * hw))
        offsets = flat.view(batch, heads, 2 * height - 1, 2 * width - 1) / layout.num_video
        stats["spatial_offsets"] = offsets
        stats["locality_space"] = ring_profile(offsets, height, width)
    return stats


def _row_weights(
    q_rows: torch.Tensor,
    keys_t: torch.Tensor,
    mask_rows: torch.Tensor | None,
    rows: torch.Tensor,
    is_causal: bool,
    qk_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized weights of some query rows over all keys and their visible-key counts, computed as the
    torch path computes them (float32 scores in log2 units, row max subtracted, exp2, divided by the sum)."""
    scores = (q_rows.to(torch.float32) * qk_scale) @ keys_t
    if mask_rows is not None:
        if mask_rows.dtype == torch.bool:
            scores.masked_fill_(mask_rows.logical_not(), MASKED)
        else:
            scores.add_(mask_rows).clamp_(min=MASKED)
    if is_causal:
        scores.masked_fill_(torch.arange(scores.shape[1], device=rows.device)[None, :] > rows[:, None], MASKED)
    row_max = scores.amax(dim=1, keepdim=True)
    row_max.masked_fill_(row_max <= MASKED / 2, 0.0)
    probs = torch.exp2(scores - row_max)
    total = probs.sum(dim=1, keepdim=True)
    weights = probs / torch.where(total > 0, total, torch.ones_like(total))
    return weights, (scores > MASKED / 2).sum(dim=1)


def _top_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    mode: str,
    features: torch.Tensor,
    valid: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, str]:
    """(topk_mass (B, Hq, 5), method): exact top masses of all rows, or of the sampled rows corrected by
    the control variates ``features`` (B, Hq, Nq, P) of every row, exactly as the torch path does."""
    batch, q_heads, num_q, _ = q.shape
    num_k, group, masked = k.shape[2], q.shape[1] // k.shape[1], mask is not None or is_causal
    sampled = sampled_rows(num_q, mode)
    rows_all = torch.arange(num_q, device=q.device) if sampled is None else sampled.to(q.device)
    chunk = max(1, min(checked_chunk_size(chunk_size) or default_chunk_size(num_k, q.device), num_q))
    result = torch.zeros(batch, q_heads, len(TOP_FRACTIONS), dtype=torch.float32, device=q.device)
    for b in range(batch):
        for h in range(q_heads):
            keys_t = k[b, h // group].to(torch.float32).t()
            masses, feats = [], []
            for r0 in range(0, rows_all.numel(), chunk):
                rows = rows_all[r0 : r0 + chunk]
                mask_rows = mask[b, h, rows] if mask is not None else None
                weights, visible = _row_weights(q[b, h, rows], keys_t, mask_rows, rows, is_causal, scale * LOG2E)
                if not masked:
                    masses.append(exact_top_mass(weights, num_k))
                    feats.append(features[b, h, rows])
                    continue
                keep = visible > 0
                if bool(keep.any()):
                    masses.append(exact_top_mass(weights[keep], visible[keep]))
                    feats.append(features[b, h, rows[keep]])
            head_valid = valid[b, h]
            count = int(head_valid.sum())
            if not masses:
                continue
            mass = torch.cat(masses)
            if sampled is None:
                result[b, h] = (mass.sum(0) / count).to(torch.float32) if count else 0.0
            else:
                mean_feats = features[b, h][head_valid].to(torch.float64).sum(0) / max(count, 1)
                result[b, h] = estimate_mean_top_mass(mass, torch.cat(feats), mean_feats)
    return result, "exact" if sampled is None else "estimate"


def triton_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    layout: TokenLayout | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    top_mass: str = "auto",
    spatial: bool = True,
    compute_output: bool = True,
    map_tiles: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor | None, AttentionStats]:
    """What ``attention_stats`` returns (same keys, shapes, float32 statistics), from the Triton kernels.

    ``chunk_size`` only sets the query rows per torch step of the top-k mass. The returned stats carry
    ``backend = "triton"`` and ``lse_source``: "flash" (FlashAttention's forward gave the output and the
    log-sum-exp) or "triton" (pass 1).
    """
    check_attention_inputs(q, k, v, attn_mask)
    if top_mass not in ("auto", "exact", "estimate", "off"):
        raise ValueError(f"top_mass must be auto, exact, estimate or off; got {top_mass!r}")
    if k.shape[2] == 0:
        raise ValueError("k and v hold no keys (length 0): every query needs at least one key")
    check_triton_device(q)
    checked_chunk_size(chunk_size)
    scale = checked_scale(scale, q.shape[-1])
    if layout is not None:
        if q.shape[2] != k.shape[2]:
            raise ValueError("a layout describes self-attention: queries and keys must be the same sequence")
        layout.check_fits(k.shape[2])
    batch, q_heads, num_q, _ = q.shape
    launch = _make_launch(q, k, attn_mask, is_causal, scale, interpret_mode())
    bufs = _make_buffers(q, k.shape[2], layout, spatial, map_tiles)
    out = None
    flash = _flash_lse(q, k, v, attn_mask, is_causal, scale)
    if flash is not None:
        out, lse2 = flash
        row_max = visible = None
    else:
        lse2, row_max, visible = _lse_pass(launch)
    if compute_output and out is None:
        out = torch.empty(batch, q_heads, num_q, v.shape[-1], dtype=q.dtype, device=q.device)
    kernel_out = out if compute_output and flash is None else None
    want_max = row_max is None and top_mass != "off"
    kernel_max = _stats_pass(launch, v, lse2, bufs, layout, kernel_out, want_max)
    row_max = kernel_max if row_max is None else row_max
    if not compute_output:
        out = None
    stats = _finish(bufs, layout)
    if top_mass != "off":
        masked = attn_mask is not None or is_causal
        valid = row_max > MASKED / 2
        columns = [bufs.entropy, torch.where(valid, (lse2 - row_max) * LN2, torch.zeros_like(lse2))]
        if masked:
            if visible is None:  # flash path: causal without a mask sees the prefix
                visible = torch.arange(1, num_q + 1, device=q.device).expand(batch, q_heads, num_q)
            columns.append(torch.log(visible.clamp(min=1).to(torch.float32)))
        features = torch.stack(columns, dim=-1)
        mask = prepare_mask(attn_mask, batch, q_heads, num_q, k.shape[2])
        topk, method = _top_mass(q, k, mask, is_causal, scale, top_mass, features, valid, chunk_size)
        # the torch path's key order: topk_mass right after the per-query and per-key statistics
        stats = AttentionStats(entropy=stats.pop("entropy"), received=stats.pop("received"), topk_mass=topk, **stats)
        stats.top_mass_method = method
    stats.backend = "triton"
    stats.lse_source = "flash" if flash is not None else "triton"
    return out, stats
