"""Dense reference: the same statistics from a whole softmax(QK^T) map.

Only for checking the streaming path on small inputs (tests) and as the naive baseline of the
benchmark; it holds B x H x Nq x Nk probabilities, which is what vditscope exists to avoid.
"""

from __future__ import annotations

import math

import torch

from ..layout import TokenLayout
from .basics import masked_logits
from .streaming import frame_distance_profile, ring_profile
from .top_mass import TOP_FRACTIONS, top_counts


def dense_probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """softmax(scale * q k^T + mask) as a whole (B, Hq, Nq, Nk) tensor; grouped heads expanded."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * scale
    logits = masked_logits(logits, attn_mask)
    if is_causal:
        causal = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def dense_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    layout: TokenLayout | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dtype: torch.dtype = torch.float64,
    map_tiles: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and statistics of ``attention_stats`` computed from the whole map, in ``dtype``."""
    p = dense_probabilities(q, k, scale=scale, attn_mask=attn_mask, is_causal=is_causal, dtype=dtype)
    group = q.shape[1] // k.shape[1]
    out = p @ v.repeat_interleave(group, dim=1).to(dtype)
    visible = p > 0
    logp = torch.where(visible, p.clamp_min(1e-300).log(), torch.zeros_like(p))
    entropy = -(p * logp).sum(-1)
    row_valid = visible.any(-1)
    stats: dict[str, torch.Tensor] = {"entropy": entropy, "received": p.sum(-2)}

    num_valid = visible.sum(-1)  # (B, H, Nq)
    sorted_p = p.sort(dim=-1, descending=True).values.cumsum(-1)
    counts = top_counts(num_valid.flatten().clamp(min=1), TOP_FRACTIONS).view(*num_valid.shape, -1)
    top = sorted_p.gather(-1, counts - 1)  # (B, H, Nq, 5)
    weight = row_valid.to(dtype)[..., None]
    stats["topk_mass"] = (top * weight).sum(-2) / weight.sum(-2).clamp(min=1)

    if layout is not None:
        frames, hw = layout.frames, layout.tokens_per_frame
        video = slice(layout.video_start, layout.video_stop)
        pv = p[..., video, :]  # video queries
        per_frame = pv[..., video].unflatten(-1, (frames, hw)).sum(-1)  # (B, H, Nv, F)
        stats["frame_map"] = per_frame.unflatten(-2, (frames, hw)).mean(-2)
        if layout.text is not None:
            stats["text_mass"] = pv[..., layout.text[0] : layout.text[1]].sum(-1).mean(-1)
            stats["text_received"] = pv[..., layout.text[0] : layout.text[1]].mean(-2)
        else:
            stats["text_mass"] = torch.zeros(p.shape[:2], dtype=dtype)
        stats["locality_time"] = frame_distance_profile(stats["frame_map"])
        token = torch.arange(layout.num_video)
        same_position = (token[:, None] % hw == token[None, :] % hw) & (token[:, None] // hw != token[None, :] // hw)
        stats["same_position_mass"] = (pv[..., video] * same_position.to(dtype)).sum(-1).mean(-1)
        if map_tiles is not None:
            size, tiles = layout.tiles(map_tiles)
            tile = token // size
            one_hot = torch.nn.functional.one_hot(tile, tiles).to(dtype)  # (Nv, T)
            tile_mass = pv[..., video] @ one_hot  # (B, H, Nv, T)
            stats["token_map"] = (one_hot.t() @ tile_mass) / one_hot.sum(0)[:, None]
        # same-frame mass by spatial offset, looping over offsets on the whole map
        vv = pv[..., video].unflatten(-2, (frames, layout.height, layout.width))
        vv = vv.unflatten(-1, (frames, layout.height, layout.width))
        same = torch.diagonal(vv, dim1=2, dim2=5)  # (B, H, Hq, Wq, Hk, Wk, F)
        offsets = torch.zeros(*p.shape[:2], 2 * layout.height - 1, 2 * layout.width - 1, dtype=dtype)
        for y in range(layout.height):
            for x in range(layout.width):
                for y2 in range(layout.height):
                    for x2 in range(layout.width):
                        offsets[..., y2 - y + layout.height - 1, x2 - x + layout.width - 1] += same[
                            :, :, y, x, y2, x2, :
                        ].sum(-1)
        stats["spatial_offsets"] = offsets / layout.num_video
        stats["locality_space"] = ring_profile(stats["spatial_offsets"], layout.height, layout.width)
    return out, stats
