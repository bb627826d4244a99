"""Per-key statistics of one attention call: what each key receives, and its key and value norms.

The material for attention-sink studies: a sink is a key whose received attention is many times
the median key's; language-model sinks are known to have small value norms. Computed exactly by
the streaming ``attention_stats`` (no N x N map) plus two norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..thresholds import SINK_MEDIAN_FLOOR
from .streaming import MASK_FLOOR, attention_stats

MIN_VISIBLE = 16  # queries that must see a key before it can count as a sink


@dataclass
class KeyStats:
    """Per batch element, query head and key (B, H, Nk), all float32."""

    received: torch.Tensor  # mean attention the key gets over all queries (masked queries give 0)
    visible: torch.Tensor  # number of queries that may attend to the key (causal/padding masks)
    key_norm: torch.Tensor  # L2 norm of the key vector (after the model's norms and RoPE)
    value_norm: torch.Tensor  # L2 norm of the value vector
    num_queries: int

    @property
    def received_visible(self) -> torch.Tensor:
        """Mean attention over the queries that can see the key (fairer for causal models' late keys)."""
        total = self.received * self.num_queries
        return torch.where(self.visible > 0, total / self.visible.clamp(min=1), torch.zeros_like(total))

    @property
    def ratio_visible(self) -> torch.Tensor:
        """received_visible / its median: the sink measure for causal or padded attention, where
        early keys are seen by more queries (equal to ``ratio`` without masks)."""
        fair = self.received_visible
        return fair / sink_baseline(fair).unsqueeze(-1)

    def sinks(self, threshold: float) -> torch.Tensor:
        """(B, H, Nk) bool: keys with ratio_visible >= threshold, seen by at least MIN_VISIBLE queries
        (all of them when there are fewer): a causal model's last keys, seen by a handful of queries,
        would otherwise pass on the attention of one or two queries."""
        enough = self.visible >= min(MIN_VISIBLE, self.num_queries)
        return (torch.nan_to_num(self.ratio_visible, nan=0.0) >= threshold) & enough

    @property
    def ratio(self) -> torch.Tensor:
        """received / the sink baseline (the median key's, floored at the uniform share), per batch element
        and head."""
        return self.received / sink_baseline(self.received).unsqueeze(-1)


def median_received(received: torch.Tensor) -> torch.Tensor:
    """Median over the last axis of the keys that receive any mass (masked keys receive none); the mean
    of the two middle values for an even count, as numpy and pandas define it."""
    visible = torch.where(received > 0, received, torch.full_like(received, float("nan"))).float()
    if visible.numel() <= 2**24:  # torch.nanquantile's input size limit
        return visible.nanquantile(0.5, dim=-1)
    rows = visible.reshape(-1, visible.shape[-1])
    return torch.stack([row.nanquantile(0.5) for row in rows]).reshape(visible.shape[:-1])


def sink_baseline(received: torch.Tensor) -> torch.Tensor:
    """What sink ratios divide by: the median received attention over the keys with any mass, floored at
    SINK_MEDIAN_FLOOR x the uniform share 1 / (keys with any mass). Without the floor a concentrated head,
    whose median key gets ~0, makes ordinary keys look like sinks (ratios of 10^4-10^7)."""
    keys = (received > 0).sum(dim=-1).clamp(min=1).to(torch.float32)
    return torch.maximum(median_received(received), SINK_MEDIAN_FLOOR / keys)


def visible_queries(
    attn_mask: torch.Tensor | None, is_causal: bool, batch: int, heads: int, num_q: int, num_k: int
) -> torch.Tensor:
    """(B, H, Nk) number of queries allowed to attend to each key under SDPA's mask semantics."""
    device = attn_mask.device if attn_mask is not None else "cpu"
    allowed = None
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(torch.float32) > MASK_FLOOR
        while mask.ndim < 4:
            mask = mask.unsqueeze(0)
        allowed = mask
    if is_causal:
        causal = torch.ones(num_q, num_k, dtype=torch.bool, device=device).tril()
        allowed = causal[None, None] if allowed is None else allowed & causal
    if allowed is None:
        return torch.full((batch, heads, num_k), float(num_q))
    rows = allowed.shape[-2]
    counts = allowed.sum(dim=-2, dtype=torch.float32) * (num_q if rows == 1 else 1)
    return counts.expand(batch, heads, num_k).cpu().clone()


def key_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    chunk_size: int | None = None,
) -> KeyStats:
    """Per-key statistics of ``softmax(q k^T * scale + mask) v`` (torch SDPA shapes and semantics;
    grouped-query heads allowed), on the CPU as float32."""
    batch, heads, num_q = q.shape[:3]
    num_k = k.shape[2]
    _, stats = attention_stats(
        q,
        k,
        v,
        scale=scale,
        attn_mask=attn_mask,
        is_causal=is_causal,
        chunk_size=chunk_size,
        top_mass="off",
        compute_output=False,
    )
    group = heads // k.shape[1]
    key_norm = k.float().norm(dim=-1).repeat_interleave(group, dim=1)
    value_norm = v.float().norm(dim=-1).repeat_interleave(group, dim=1)
    return KeyStats(
        received=(stats["received"] / num_q).cpu(),
        visible=visible_queries(attn_mask, is_causal, batch, heads, num_q, num_k),
        key_norm=key_norm.cpu(),
        value_norm=value_norm.cpu(),
        num_queries=num_q,
    )
