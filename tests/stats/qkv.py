"""Random attention inputs and the dense float64 attention reference, shared by the stats tests.

Plain functions rather than fixtures: hypothesis strategies and parametrize lists built at collection
call them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_qkv(
    num_q: int,
    num_k: int | None = None,
    *,
    batch: int = 2,
    q_heads: int = 3,
    kv_heads: int | None = None,
    dim: int = 24,
    dim_v: int | None = None,
    sharpness: float = 2.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (batch, heads, tokens, dim) q, k, v from a generator seeded with ``seed``, drawn in that
    order; q is scaled by ``sharpness`` so that attention is peaked. ``kv_heads`` defaults to
    ``q_heads``, ``num_k`` to ``num_q`` and ``dim_v`` to ``dim``."""
    gen = torch.Generator().manual_seed(seed)
    kv_heads = q_heads if kv_heads is None else kv_heads
    num_k = num_q if num_k is None else num_k
    dim_v = dim if dim_v is None else dim_v
    q = torch.randn(batch, q_heads, num_q, dim, generator=gen) * sharpness
    k = torch.randn(batch, kv_heads, num_k, dim, generator=gen)
    v = torch.randn(batch, kv_heads, num_k, dim_v, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def sdpa64(q, k, v, **kwargs) -> torch.Tensor:
    """torch SDPA in float64 (the ground truth for outputs), grouped-query heads enabled when needed.

    A floating mask must be float64 too: torch 2.13 silently gives wrong results for a float64
    query with a float32 additive mask on CPU.
    """
    gqa = q.shape[1] != k.shape[1]
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kwargs["attn_mask"] = mask.double()
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), enable_gqa=gqa, **kwargs)
