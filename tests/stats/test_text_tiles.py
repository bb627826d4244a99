"""text_tile_map against a dense float64 reference on odd sizes: cross attention and joint attention."""

from __future__ import annotations

import pytest
import torch

from vditscope.stats.text_tiles import TEXT_TILE_KEYS, text_tile_map


def _reference(q, k, queries, text, tile_size, tiles, mask=None):
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, dim=1)
    scores = q.double() @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    probs = scores.softmax(-1)[:, :, queries, text]
    out = torch.zeros(q.shape[0], q.shape[1], tiles, probs.shape[-1], dtype=torch.float64)
    for t in range(tiles):
        out[:, :, t] = probs[:, :, t * tile_size : (t + 1) * tile_size].mean(2)
    return out


@pytest.mark.parametrize("case", ["cross", "joint", "masked"])
def test_text_tile_map_matches_dense_reference(case: str) -> None:
    g = torch.Generator().manual_seed(5)
    video, text_len = 37, 11  # 37 video tokens in tiles of 5: 8 tiles, the last of 2
    if case == "cross":
        nq, nk, queries, text = video, text_len, slice(0, video), slice(0, text_len)
    else:  # text first, then video (CogVideoX's order)
        nq = nk = text_len + video
        queries, text = slice(text_len, nq), slice(0, text_len)
    q = torch.randn(2, 6, nq, 8, generator=g)
    k = torch.randn(2, 3, nk, 8, generator=g) * 1.7
    mask = None
    if case == "masked":
        mask = torch.ones(2, 1, 1, nk, dtype=torch.bool)
        mask[1, ..., 3:text_len] = False  # padding text keys of the second prompt
    got = text_tile_map(q, k, queries=queries, text=text, tile_size=5, tiles=8, attn_mask=mask, chunk_size=4)
    want = _reference(q, k, queries, text, 5, 8, mask)
    assert got.shape == (2, 6, 8, text_len)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)
    if case == "masked":
        assert got[1, :, :, 3:].abs().max() == 0


def test_text_keys_are_capped() -> None:
    q, k = torch.randn(1, 1, 10, 4), torch.randn(1, 1, 200, 4)
    got = text_tile_map(q, k, queries=slice(0, 10), text=slice(0, 200), tile_size=10, tiles=1)
    assert got.shape == (1, 1, 1, TEXT_TILE_KEYS)
    assert 0 < got.sum() < 1
