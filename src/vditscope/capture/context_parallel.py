"""Capture under diffusers' context parallelism (``transformer.enable_parallelism(ContextParallelConfig(...))``).

Under Ulysses (``ulysses_degree`` N) every rank's self-attention SDPA call holds the whole sequence and
1/N of the heads (rank r: heads r*H/N ... (r+1)*H/N - 1, tokens in their original order), so its statistics
are exact for those heads; a cross-attention call (Wan's attn2 runs without context parallelism) holds the
rank's 1/N of the queries and every head, so its queries are gathered and each rank takes its share of the
heads. Every rank ends with the same complete records (gathered in rank order). Ring attention hands each
SDPA call one block of the keys, whose softmax is not the model's: it needs a backend that returns the
log-sum-exp, which the native backend that vditscope observes does not, so it is refused in one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import VditscopeError


@dataclass(frozen=True)
class HeadShards:
    """This rank's place in a Ulysses group: ``degree`` ranks, this one ``rank``, their process group."""

    degree: int
    rank: int
    group: Any

    def heads(self, total: int) -> range:
        """The heads this rank computes statistics for, out of ``total``."""
        if total % self.degree:
            raise VditscopeError(f"{total} heads do not split over {self.degree} Ulysses ranks")
        share = total // self.degree
        return range(self.rank * share, (self.rank + 1) * share)

    def gather_sequence(self, tensor: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """The rank-order concatenation of every rank's ``tensor`` along ``dim`` (the sequence shards)."""
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.degree)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def gather_lists(self, items: list[Any]) -> list[list[Any]]:
        """Every rank's ``items`` (picklable records), in rank order, on every rank."""
        import torch.distributed as dist

        gathered: list[list[Any] | None] = [None] * self.degree
        dist.all_gather_object(gathered, items, group=self.group)
        return [part or [] for part in gathered]

    def local_heads(self, chosen: list[int], local: int) -> list[tuple[int, int]]:
        """(index in this rank's call, global head) of the ``chosen`` global heads this rank holds, for a call
        holding ``local`` heads."""
        mine = self.heads(local * self.degree)
        return [(head - mine.start, head) for head in chosen if head in mine]


def head_shards(models: Iterable[nn.Module]) -> HeadShards | None:
    """The Ulysses shards of context-parallel transformers, None without context parallelism; ring
    attention raises VditscopeError (its SDPA calls see one block of keys each)."""
    for model in models:
        config = getattr(model, "_parallel_config", None)
        cp = getattr(config, "context_parallel_config", None)
        if cp is None or (cp.ring_degree or 1) * (cp.ulysses_degree or 1) <= 1:
            continue
        if (cp.ring_degree or 1) > 1:
            raise VditscopeError(
                f"ring attention (ring_degree={cp.ring_degree}) gives each attention call one block of the keys; "
                "vditscope observes whole rows: use ContextParallelConfig(ulysses_degree=N)"
            )
        return HeadShards(int(cp.ulysses_degree), int(cp._ulysses_local_rank), cp._ulysses_mesh.get_group())
    return None


@dataclass(frozen=True)
class ShardedCall:
    """The q, k, v (and mask) one rank computes statistics of, and the global index of their first head."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None
    first_head: int


def rank_share(
    shards: HeadShards, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, heads: int
) -> ShardedCall:
    """This rank's share of one (B, H, N, D) call: a call holding a head shard is taken as it is (its heads
    offset by rank); a call holding a query shard of every head has its queries (and a per-query mask)
    gathered, and this rank keeps its heads."""
    if q.shape[1] * shards.degree == heads:
        return ShardedCall(q, k, v, attn_mask, shards.heads(heads).start)
    if q.shape[1] != heads:
        raise VditscopeError(f"a call with {q.shape[1]} heads fits neither a head nor a query shard of {heads}")
    mine = shards.heads(heads)
    part = slice(mine.start, mine.stop)
    full_q = shards.gather_sequence(q)
    if attn_mask is not None and attn_mask.ndim == 4 and attn_mask.shape[-2] == q.shape[2] > 1:
        attn_mask = shards.gather_sequence(attn_mask)
    if attn_mask is not None and attn_mask.ndim == 4 and attn_mask.shape[1] == heads:
        attn_mask = attn_mask[:, part]
    return ShardedCall(full_q[:, part], k[:, part], v[:, part], attn_mask, mine.start)


def merge_head_shards(per_rank: list[list[Any]]) -> list[Any]:
    """Records of the same calls from every rank (rank order: heads in order) as one record per call with
    every head: per-head arrays and maps concatenated along their head axis. The i-th record of one call on
    each rank belong together (a call is its generation, step, branch, sample, layer, kind and site)."""
    from dataclasses import fields, replace

    import numpy as np

    def key(record: Any) -> tuple:
        return (record.generation, record.step, record.branch, record.sample, record.layer, record.kind, record.site)

    def numbered(records: list[Any]) -> dict[tuple, Any]:
        seen: dict[tuple, int] = {}
        out = {}
        for record in records:
            k = key(record)
            seen[k] = seen.get(k, -1) + 1
            out[(*k, seen[k])] = record
        return out

    ranks = [numbered(records) for records in per_rank]
    if any(rank.keys() != ranks[0].keys() for rank in ranks):
        raise VditscopeError("the context-parallel ranks recorded different attention calls")
    merged = []
    for call, first in ranks[0].items():
        parts = [rank[call] for rank in ranks]
        heads = first.heads
        changes: dict[str, Any] = {}
        for f in fields(first):
            value = getattr(first, f.name)
            if isinstance(value, np.ndarray) and value.shape[:1] == (heads,):
                changes[f.name] = np.concatenate([getattr(part, f.name) for part in parts])
        changes["maps"] = {name: torch.cat([part.maps[name] for part in parts]) for name in first.maps}
        changes["probes"] = {  # a probe's per-head values (first axis: this rank's heads) are concatenated too
            name: np.concatenate([part.probes[name] for part in parts]) if np.shape(value)[:1] == (heads,) else value
            for name, value in first.probes.items()
        }
        merged.append(replace(first, **changes))
    return merged
