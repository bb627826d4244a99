"""Where in the video each text token is looked at from: the mass video queries put on each text key, pooled
over query tiles (the explorer's cross-attention view).

For a cross-attention call (every key a text token) and for joint attention (text keys beside the video
ones, softmax over all keys) alike: the softmax rows of the video queries, restricted to the text columns,
averaged over each tile of video queries (the tiles of ``TokenLayout.tiles``, in sequence order). Computed
exactly in query chunks: memory O(chunk x keys), never N x N.
"""

from __future__ import annotations

import torch

from .basics import checked_scale, masked_logits

TEXT_TILE_KEYS = 64  # at most this many text keys (the first ones: the prompt, before the padding) are kept


def text_tile_map(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    queries: slice,
    text: slice,
    tile_size: int,
    tiles: int,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(B, Hq, tiles, text keys) float32: for each tile of the video queries ``queries`` (``tile_size``
    consecutive queries; the last tile may be shorter) the mean over its queries of the attention on each key
    in ``text`` (at most TEXT_TILE_KEYS of them). q (B, Hq, Nq, D), k (B, Hk, Nk, D), Hq a multiple of Hk; the
    softmax runs over all Nk keys, masked as SDPA masks them."""
    batch, q_heads, num_q, dim = q.shape
    group = q_heads // k.shape[1]
    scale = checked_scale(scale, dim)
    first, stop = queries.indices(num_q)[:2]
    cols = range(*text.indices(k.shape[2]))[:TEXT_TILE_KEYS]
    keep = slice(cols.start, cols.stop) if len(cols) else slice(0, 0)
    mask = None
    if attn_mask is not None:  # bool (True = attend) or additive in natural-log units, as SDPA takes it
        mask = attn_mask
        while mask.ndim < 4:
            mask = mask.unsqueeze(0)
        mask = mask.expand(batch, q_heads, mask.shape[-2], k.shape[2])
    sums = torch.zeros(batch, q_heads, tiles, len(cols), dtype=torch.float32, device=q.device)
    counts = torch.zeros(tiles, dtype=torch.float32, device=q.device)
    tile_of = torch.arange(stop - first, device=q.device) // tile_size
    counts.index_add_(0, tile_of, torch.ones_like(tile_of, dtype=torch.float32))
    for b in range(batch):
        for h in range(q_heads):
            keys = k[b, h // group].float()
            for r0 in range(first, stop, chunk_size):
                r1 = min(stop, r0 + chunk_size)
                scores = q[b, h, r0:r1].float() @ keys.t() * scale
                if mask is not None:
                    scores = masked_logits(scores, mask[b, h, r0:r1] if mask.shape[-2] > 1 else mask[b, h])
                probs = torch.nan_to_num(scores.softmax(dim=-1))  # a row with every key masked gives no mass
                sums[b, h].index_add_(0, tile_of[r0 - first : r1 - first], probs[:, keep])
    return sums / counts.clamp(min=1)[None, None, :, None]
