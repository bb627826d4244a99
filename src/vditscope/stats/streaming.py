"""Exact attention with statistics, streamed over query chunks so no N x N map is ever held.

Every statistic comes from the same unnormalized probabilities that are multiplied with V:
one chunk of scores, one exp2, one matrix product with V, then cheap reductions over the chunk
(row sums, per-frame sums of contiguous key blocks, a row-wise dot product for the entropy).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..layout import TokenLayout
from .basics import (
    CHUNK_ELEMENTS,
    CHUNK_ELEMENTS_GPU,
    LN2,
    LOG2E,
    MASK_FLOOR,
    MASKED,
    MAX_CHUNK,
    MAX_CHUNK_GPU,
    MIN_CHUNK,
    AttentionStats,
    TopMassMode,
    check_attention_inputs,
    checked_chunk_size,
    checked_scale,
    chunk_rows,
    default_chunk_size,
    frame_distance_profile,
    offset_index,
    prepare_mask,
    ring_profile,
)
from .top_mass import (
    TOP_FRACTIONS,
    estimate_mean_top_mass,
    exact_top_mass,
    sampled_rows,
)

# Below this many scores in a call, a thread pool costs more than it saves.
THREADED_MIN_SCORES = 1 << 20

Backend = Literal["auto", "torch", "triton"]

__all__ = [  # the shared basics stay importable from here, where other modules found them
    "CHUNK_ELEMENTS",
    "CHUNK_ELEMENTS_GPU",
    "LN2",
    "LOG2E",
    "MASKED",
    "MASK_FLOOR",
    "MAX_CHUNK",
    "MAX_CHUNK_GPU",
    "MIN_CHUNK",
    "AttentionStats",
    "Backend",
    "TopMassMode",
    "attention_stats",
    "check_attention_inputs",
    "checked_chunk_size",
    "checked_scale",
    "chunk_rows",
    "default_chunk_size",
    "frame_distance_profile",
    "prepare_mask",
    "ring_profile",
    "run_over_heads",
    "uniform_locality",
]


@dataclass
class _HeadAccumulator:
    """Running sums of one (batch, query head) over its chunks."""

    received: torch.Tensor
    frame_sum: torch.Tensor | None
    text_sum: torch.Tensor | None
    space_sum: torch.Tensor | None
    text_recv: torch.Tensor | None
    top_sum: torch.Tensor
    position_sum: torch.Tensor | None = None
    tile_sum: torch.Tensor | None = None
    tile_size: int = 0
    valid_rows: int = 0
    sample_mass: list[torch.Tensor] | None = None
    sample_features: list[torch.Tensor] | None = None
    feature_sum: torch.Tensor | None = None


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    layout: TokenLayout | None = None,
    chunk_size: int | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    top_mass: TopMassMode = "auto",
    spatial: bool = True,
    compute_output: bool = True,
    map_tiles: int | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor | None, AttentionStats]:
    """Attention output and its statistics, computed exactly in query chunks.

    q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) as for torch SDPA; Hq may be a multiple of
    Hk (grouped-query heads). ``attn_mask`` is a boolean (True = attend) or additive mask
    broadcastable to (B, Hq, Nq, Nk); ``is_causal`` masks keys after the query (top-left aligned).
    ``top_mass``: "exact" per row, "estimate" (exact on a subset of rows, corrected by control
    variates), "auto" (exact up to 2,048 queries), "off" (skip it, fastest). With
    ``compute_output=False`` only the statistics are computed and ``out`` is None.

    Statistics (float32): ``entropy`` (B, H, Nq) nats; ``received`` (B, H, Nk) mass per key summed
    over queries; ``topk_mass`` (B, H, 5) mean mass of the top 1/5/10/20/50% keys. With a layout
    (self-attention only): ``frame_map`` (B, H, F, F), ``text_mass`` (B, H), ``locality_time``
    (B, H, F) mass at frame distance 0..F-1, ``text_received`` (B, H, Ntext) mass on each text
    token (when the layout has text), and with ``spatial``: ``spatial_offsets``
    (B, H, 2Hp-1, 2Wp-1) same-frame mass by (dy, dx) and ``locality_space`` (B, H, max(Hp, Wp))
    same-frame mass by Chebyshev ring, ``same_position_mass`` (B, H) mass on the keys at the
    query's own spatial position in the other frames; with ``map_tiles`` T: ``token_map``
    (B, H, T', T'), the video tokens cut in sequence order into T' <= T equal tiles
    (``TokenLayout.tiles``), row a = mean over the video queries of tile a of the mass on each tile.
    Means are over queries with at least one visible key; the layout statistics are means over
    video queries.

    ``backend``: "torch" (this chunked path), "triton" (``triton_stats``: CUDA, or CPU tensors with
    TRITON_INTERPRET=1), "auto" (triton for CUDA tensors when triton imports, else torch).
    """
    if _use_triton(q, backend):
        from .triton_stats import triton_attention_stats

        return triton_attention_stats(
            q, k, v, scale=scale, layout=layout, attn_mask=attn_mask, is_causal=is_causal, top_mass=top_mass,
            spatial=spatial, compute_output=compute_output, map_tiles=map_tiles, chunk_size=chunk_size,
        )  # fmt: skip
    check_attention_inputs(q, k, v, attn_mask)
    if top_mass not in ("auto", "exact", "estimate", "off"):
        raise ValueError(f"top_mass must be auto, exact, estimate or off; got {top_mass!r}")
    batch, q_heads, num_q, dim = q.shape
    kv_heads, num_k, dim_v = k.shape[1], k.shape[2], v.shape[-1]
    if num_k == 0:
        raise ValueError("k and v hold no keys (length 0): every query needs at least one key")
    group = q_heads // kv_heads
    device = q.device
    scale = checked_scale(scale, dim)
    if layout is not None:
        if num_q != num_k:
            raise ValueError("a layout describes self-attention: queries and keys must be the same sequence")
        layout.check_fits(num_k)
    chunk = chunk_rows(chunk_size, default_chunk_size(num_k, device), num_q)

    mask = prepare_mask(attn_mask, batch, q_heads, num_q, num_k)
    masked_rows = mask is not None or is_causal
    rows_exact = None if top_mass == "off" else sampled_rows(num_q, top_mass)
    estimating = top_mass != "off" and rows_exact is not None
    if estimating:
        # per-chunk ranges of the sampled rows, found on the host so the device never waits
        edges = torch.searchsorted(rows_exact, torch.arange(0, num_q + chunk, chunk)).tolist()
        ranges = {r0: (edges[i], edges[i + 1]) for i, r0 in enumerate(range(0, num_q, chunk))}
        rows_exact = (rows_exact.to(device), ranges)

    out = torch.empty(batch, q_heads, num_q, dim_v, dtype=q.dtype, device=device) if compute_output else None
    entropy = torch.empty(batch, q_heads, num_q, dtype=torch.float32, device=device)
    received = torch.zeros(batch, q_heads, num_k, dtype=torch.float32, device=device)
    n_top = len(TOP_FRACTIONS)
    topk_mass = torch.zeros(batch, q_heads, n_top, dtype=torch.float32, device=device)
    frame_map = text_mass = space = text_received = position = token_map = None
    tile_size = 0
    if layout is not None:
        frames, hw = layout.frames, layout.tokens_per_frame
        frame_map = torch.zeros(batch, q_heads, frames, frames, dtype=torch.float32, device=device)
        text_mass = torch.zeros(batch, q_heads, dtype=torch.float32, device=device)
        position = torch.zeros(batch, q_heads, dtype=torch.float32, device=device)
        if map_tiles is not None:
            tile_size, tiles = layout.tiles(map_tiles)
            token_map = torch.zeros(batch, q_heads, tiles, tiles, dtype=torch.float32, device=device)
        if layout.text is not None:
            text_received = torch.zeros(batch, q_heads, layout.num_text, dtype=torch.float32, device=device)
        if spatial:
            space = torch.zeros(
                batch, q_heads, 2 * layout.height - 1, 2 * layout.width - 1, dtype=torch.float32, device=device
            )

    def process(pairs: list[tuple[int, int]], single_thread: bool) -> None:
        """Heads of the given (batch, key head) pairs, with this worker's own chunk buffers."""
        if single_thread:
            torch.set_num_threads(1)  # per-thread setting: the caller's threads are untouched
        score_buf = torch.empty(chunk, num_k, dtype=torch.float32, device=device)
        prob_buf = torch.empty(chunk, num_k, dtype=torch.float32, device=device)
        prod_buf = torch.empty(chunk, dim_v, dtype=torch.float32, device=device) if compute_output else None

        for b, hk in pairs:
            keys_t = k[b, hk].to(torch.float32).t().contiguous()
            values = v[b, hk].to(torch.float32).contiguous() if compute_output else None
            for g in range(group):
                h = hk * group + g
                acc = _HeadAccumulator(
                    received=received[b, h],
                    frame_sum=frame_map[b, h] if frame_map is not None else None,
                    text_sum=text_mass[b, h : h + 1] if text_mass is not None else None,
                    space_sum=(torch.zeros(hw, hw, dtype=torch.float32, device=device) if space is not None else None),
                    text_recv=text_received[b, h] if text_received is not None else None,
                    top_sum=topk_mass[b, h],
                    position_sum=position[b, h : h + 1] if position is not None else None,
                    tile_sum=token_map[b, h] if token_map is not None else None,
                    tile_size=tile_size,
                )
                if estimating:
                    acc.sample_mass, acc.sample_features = [], []
                    acc.feature_sum = torch.zeros(3 if masked_rows else 2, dtype=torch.float64, device=device)
                queries = q[b, h].to(torch.float32) * (scale * LOG2E)
                head_mask = mask[b, h] if mask is not None else None
                for r0 in range(0, num_q, chunk):
                    r1 = min(num_q, r0 + chunk)
                    _chunk_step(
                        queries[r0:r1],
                        keys_t,
                        values,
                        r0,
                        score_buf[: r1 - r0],
                        prob_buf[: r1 - r0],
                        prod_buf[: r1 - r0] if prod_buf is not None else None,
                        head_mask,
                        is_causal,
                        masked_rows,
                        layout,
                        out[b, h, r0:r1] if out is not None else None,
                        entropy[b, h, r0:r1],
                        acc,
                        top_mass,
                        rows_exact,
                    )
                _finish_head(acc, layout, space, b, h)

    run_over_heads(process, batch, kv_heads, num_q * num_k, device)

    stats = AttentionStats(entropy=entropy, received=received)
    if top_mass != "off":
        stats["topk_mass"] = topk_mass
        stats.top_mass_method = "estimate" if estimating else "exact"
    if layout is not None:
        stats["frame_map"] = frame_map
        stats["text_mass"] = text_mass
        stats["locality_time"] = frame_distance_profile(frame_map)
        stats["same_position_mass"] = position
        if token_map is not None:
            stats["token_map"] = token_map
        if text_received is not None:
            stats["text_received"] = text_received
        if space is not None:
            stats["spatial_offsets"] = space
            stats["locality_space"] = ring_profile(space, layout.height, layout.width)
    return out, stats


def _use_triton(q: torch.Tensor, backend: str) -> bool:
    """Whether ``attention_stats`` dispatches to the Triton kernels; ValueError for an unusable request."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton; got {backend!r}")
    if backend == "torch" or (backend == "auto" and q.device.type != "cuda"):
        return False
    from .triton_stats import check_triton_device, triton_available

    if not triton_available():
        if backend == "auto":
            return False
        raise ValueError("backend='triton' needs the triton package, which is not installed; use backend='torch'")
    check_triton_device(q)
    return True


def run_over_heads(
    process: Any, batch: int, kv_heads: int, scores_per_head: int, device: torch.device, name: str = "vditscope"
) -> None:
    """Call ``process(pairs, single_thread)`` on the (batch, key head) pairs: on CPU, whole heads per
    thread with single-threaded ops (which beat intra-op threading); one call on a GPU or for small work."""
    pairs = [(b, hk) for b in range(batch) for hk in range(kv_heads)]
    workers = min(len(pairs), torch.get_num_threads()) if device.type == "cpu" else 1
    if scores_per_head * len(pairs) < THREADED_MIN_SCORES:
        workers = 1
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
            jobs = [pool.submit(process, pairs[w::workers], True) for w in range(workers)]
            for job in jobs:
                job.result()
    else:
        process(pairs, False)


def _chunk_step(
    queries: torch.Tensor,
    keys_t: torch.Tensor,
    values: torch.Tensor | None,
    row0: int,
    scores: torch.Tensor,
    probs: torch.Tensor,
    product: torch.Tensor | None,
    head_mask: torch.Tensor | None,
    is_causal: bool,
    masked_rows: bool,
    layout: TokenLayout | None,
    out_rows: torch.Tensor | None,
    entropy_rows: torch.Tensor,
    acc: _HeadAccumulator,
    top_mass: str,
    rows_exact: tuple[torch.Tensor, dict[int, tuple[int, int]]] | None,
) -> None:
    """One chunk of query rows: scores, probabilities, output rows and every statistic."""
    rows = scores.shape[0]
    num_k = scores.shape[1]
    torch.mm(queries, keys_t, out=scores)
    if head_mask is not None:
        chunk_mask = head_mask[row0 : row0 + rows]
        if chunk_mask.stride(0) == 0:  # key padding mask: the same row for every query
            chunk_mask = chunk_mask[:1]
        if chunk_mask.dtype == torch.bool:
            scores.masked_fill_(chunk_mask.logical_not(), MASKED)
        else:
            scores.add_(chunk_mask).clamp_(min=MASKED)
    if is_causal:
        query_index = torch.arange(row0, row0 + rows, device=scores.device)[:, None]
        key_index = torch.arange(num_k, device=scores.device)[None, :]
        scores.masked_fill_(key_index > query_index, MASKED)
    row_max = scores.amax(dim=1, keepdim=True)
    empty = None
    if masked_rows:
        empty = row_max <= MASKED / 2
        if bool(empty.any()):
            row_max.masked_fill_(empty, 0.0)
        else:
            empty = None
    scores.sub_(row_max)
    torch.exp2(scores, out=probs)
    row_sum = probs.sum(dim=1)
    inv = torch.where(row_sum > 0, row_sum.reciprocal(), torch.zeros_like(row_sum))
    if out_rows is not None:
        torch.mm(probs, values, out=product)
        out_rows.copy_(product.mul_(inv[:, None]))
    visible = None
    if masked_rows and top_mass != "off":
        visible = (scores > MASKED / 2).sum(dim=1)
    # entropy = ln(sum P) - ln2 * sum(P * S) / sum(P), S = log2-scaled logits minus the row max;
    # scores are not needed after this, so the product is taken in place
    dots = scores.mul_(probs).sum(dim=1)
    log_sum = torch.log(row_sum.clamp(min=1e-30))
    torch.sub(log_sum, dots * inv * LN2, out=entropy_rows)
    valid = None
    if empty is not None:
        valid = ~empty.view(rows)
        entropy_rows.masked_fill_(~valid, 0.0)
        acc.valid_rows += int(valid.sum())
    else:
        acc.valid_rows += rows
    acc.received.addmv_(probs.t(), inv)

    if layout is not None:
        _layout_step(probs, inv, row0, layout, acc)

    if top_mass == "off":
        return
    if rows_exact is None:
        local = None
        weights = probs * inv[:, None]
    else:
        sampled, ranges = rows_exact
        lo, hi = ranges[row0]
        local = sampled[lo:hi] - row0
        weights = probs[local] * inv[local, None]
        feats = _features(entropy_rows, log_sum, visible)
        if valid is not None:
            feats = feats[valid]
        acc.feature_sum += feats.to(torch.float64).sum(0)
    if weights.shape[0] == 0:
        return
    if visible is None:
        masses = exact_top_mass(weights, num_k)  # every row sees every key: no host sync
    else:
        num_valid = visible if local is None else visible[local]
        keep = num_valid > 0
        if not bool(keep.all()):
            weights, num_valid = weights[keep], num_valid[keep]
            if local is not None:
                local = local[keep]
        if weights.shape[0] == 0:
            return
        masses = exact_top_mass(weights, num_valid)
    if local is None:
        acc.top_sum += masses.sum(0)
    else:
        acc.sample_mass.append(masses)
        acc.sample_features.append(
            _features(entropy_rows[local], log_sum[local], None if visible is None else visible[local])
        )


def _features(entropy: torch.Tensor, log_sum: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """Per-row control variates of the top-mass estimate: entropy, log row sum (= -log max weight),
    and, when keys are masked, the log number of visible keys."""
    columns = [entropy, log_sum]
    if visible is not None:
        columns.append(torch.log(visible.clamp(min=1).to(torch.float32)))
    return torch.stack(columns, dim=1)


def _layout_step(
    probs: torch.Tensor,
    inv: torch.Tensor,
    row0: int,
    layout: TokenLayout,
    acc: _HeadAccumulator,
) -> None:
    """Frame map, text mass and same-frame spatial sums of the video query rows of one chunk."""
    rows = probs.shape[0]
    v0 = max(row0, layout.video_start)
    v1 = min(row0 + rows, layout.video_stop)
    if v1 <= v0:
        return
    frames, hw = layout.frames, layout.tokens_per_frame
    local = slice(v0 - row0, v1 - row0)
    video_keys = probs[local, layout.video_start : layout.video_stop].unflatten(1, (frames, hw))
    frame_mass = video_keys.sum(dim=2).mul_(inv[local, None])
    query_frame = torch.div(torch.arange(v0, v1, device=probs.device) - layout.video_start, hw, rounding_mode="floor")
    acc.frame_sum.index_add_(0, query_frame, frame_mass)
    # same spatial position in the other frames: gather each row's own column of every frame
    query_position = (torch.arange(v0, v1, device=probs.device) - layout.video_start) % hw
    same_position = video_keys.gather(2, query_position.view(-1, 1, 1).expand(-1, frames, 1)).squeeze(2)
    same_position.scatter_(1, query_frame.view(-1, 1), 0.0)
    acc.position_sum += same_position.sum(dim=1).dot(inv[local])
    if acc.tile_sum is not None:
        _tile_step(probs[local, layout.video_start : layout.video_stop], inv[local], v0 - layout.video_start, acc)
    if layout.text is not None:
        text_keys = probs[local, layout.text[0] : layout.text[1]]
        acc.text_sum += text_keys.sum(dim=1).dot(inv[local])
        acc.text_recv.addmv_(text_keys.t(), inv[local])
    if acc.space_sum is None:
        return
    # same-frame block of each frame the chunk touches: contiguous rows and key columns
    first = (v0 - layout.video_start) // hw
    last = (v1 - 1 - layout.video_start) // hw
    for frame in range(first, last + 1):
        f0 = layout.video_start + frame * hw
        a, z = max(v0, f0), min(v1, f0 + hw)
        block = probs[a - row0 : z - row0, f0 : f0 + hw]
        acc.space_sum[a - f0 : z - f0].addcmul_(block, inv[a - row0 : z - row0, None])


def _tile_step(video_keys: torch.Tensor, inv: torch.Tensor, first_query: int, acc: _HeadAccumulator) -> None:
    """Add the chunk's video rows to the token map: key columns summed per tile, rows added to their tile."""
    size = acc.tile_size
    num_video = video_keys.shape[1]
    full = num_video // size
    tiles = acc.tile_sum.shape[1]
    key_tiles = torch.empty(video_keys.shape[0], tiles, dtype=torch.float32, device=video_keys.device)
    key_tiles[:, :full] = video_keys[:, : full * size].unflatten(1, (full, size)).sum(dim=2)
    if full < tiles:
        key_tiles[:, full] = video_keys[:, full * size :].sum(dim=1)
    key_tiles.mul_(inv[:, None])
    query_tile = torch.div(
        torch.arange(first_query, first_query + video_keys.shape[0], device=video_keys.device),
        size,
        rounding_mode="floor",
    )
    acc.tile_sum.index_add_(0, query_tile, key_tiles)


def _finish_head(
    acc: _HeadAccumulator,
    layout: TokenLayout | None,
    space: torch.Tensor | None,
    b: int,
    h: int,
) -> None:
    """Turn one head's running sums into means (the top mass by estimate when rows were sampled)."""
    if acc.sample_mass is not None:
        if acc.sample_mass:
            masses = torch.cat(acc.sample_mass)
            feats = torch.cat(acc.sample_features)
            mean_feats = acc.feature_sum / max(acc.valid_rows, 1)
            acc.top_sum.copy_(estimate_mean_top_mass(masses, feats, mean_feats))
    elif acc.valid_rows:
        acc.top_sum.div_(acc.valid_rows)
    if layout is None:
        return
    acc.frame_sum.div_(layout.tokens_per_frame)
    acc.text_sum.div_(layout.num_video)
    acc.position_sum.div_(layout.num_video)
    if acc.tile_sum is not None:
        rows = torch.full((acc.tile_sum.shape[0],), float(acc.tile_size), device=acc.tile_sum.device)
        rows[-1] = layout.num_video - acc.tile_size * (acc.tile_sum.shape[0] - 1)
        acc.tile_sum.div_(rows[:, None])
    if acc.text_recv is not None:
        acc.text_recv.div_(layout.num_video)
    if space is not None:
        index = offset_index(layout.height, layout.width).to(acc.space_sum.device)
        flat = torch.zeros(space.shape[2] * space.shape[3], dtype=torch.float32, device=space.device)
        flat.index_add_(0, index, acc.space_sum.flatten())
        space[b, h] = flat.view(space.shape[2], space.shape[3]) / layout.num_video


def uniform_locality(frames: int, height: int, width: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``locality_time`` and ``locality_space`` would be under uniform attention over
    ``num_tokens`` keys: the baseline that makes locality visible (profile / baseline > 1)."""
    t = torch.arange(frames)
    frame_pairs = (t[:, None] - t[None, :]).abs().flatten().bincount(minlength=frames).double() / frames
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    ring = torch.maximum((ys[:, None] - ys[None, :]).abs(), (xs[:, None] - xs[None, :]).abs())
    ring_pairs = ring.flatten().bincount(minlength=max(height, width)).double() / (height * width)
    per_frame = height * width
    return (frame_pairs * per_frame / num_tokens).float(), (ring_pairs / num_tokens).float()
