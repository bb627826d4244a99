"""Tests of ``vditscope.attention_stats``: output against torch SDPA, statistics against the dense
float64 reference (``dense_attention_stats``) and against their definitions, masks, grouped-query
heads, cross-attention, half precision, top-mass modes, properties (hypothesis), input validation
and the memory promise of the streaming path (no N x N map).

Inputs are small and of odd sizes (chunk sizes never divide the sequence) so the file runs fast.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vditscope import TOP_FRACTIONS, AttentionStats, TokenLayout, attention_stats
from vditscope.stats.reference import dense_attention_stats

from .qkv import random_qkv, sdpa64

# exact fractions of the contract: top 1%, 5%, 10%, 20%, 50% of the keys
FRACTIONS = (Fraction(1, 100), Fraction(5, 100), Fraction(10, 100), Fraction(20, 100), Fraction(50, 100))

# A joint text + video sequence of odd sizes: 7 text tokens, 3 frames of 5 x 7 patches (105 video).
GRID = (3, 5, 7)
NUM_VIDEO = GRID[0] * GRID[1] * GRID[2]
NUM_TEXT = 7
LAYOUTS = {
    "text_before_video": (NUM_TEXT + NUM_VIDEO, TokenLayout(*GRID, video_start=NUM_TEXT, text=(0, NUM_TEXT))),
    "text_after_video": (
        NUM_VIDEO + NUM_TEXT,
        TokenLayout(*GRID, video_start=0, text=(NUM_VIDEO, NUM_VIDEO + NUM_TEXT)),
    ),
    "video_only": (NUM_VIDEO, TokenLayout(*GRID)),
    # video in the middle, text at the end, and 3 tokens that are neither (e.g. registers)
    "video_text_and_other": (
        2 + NUM_VIDEO + NUM_TEXT + 1,
        TokenLayout(*GRID, video_start=2, text=(2 + NUM_VIDEO, 2 + NUM_VIDEO + NUM_TEXT)),
    ),
    "no_layout": (NUM_TEXT + NUM_VIDEO, None),
}
CHUNKS = [1, 13, 64, None]

ATOL32 = 1e-5
RTOL32 = 1e-5


# ----------------------------------------------------------------------------------------------
# helpers


pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def make_qkv(
    batch: int, q_heads: int, num_q: int, dim: int, *, sharpness: float = 3.0, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v (see ``random_qkv``), sized in the order of their shape; q is scaled so attention
    is peaked (top-k statistics are then informative)."""
    return random_qkv(num_q, batch=batch, q_heads=q_heads, dim=dim, sharpness=sharpness, **kwargs)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float = ATOL32, rtol: float = RTOL32, name: str = ""
) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(
        actual.to(torch.float64), expected.to(torch.float64), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )


def assert_stats_match_reference(stats: dict, ref: dict, *, atol: float = ATOL32, rtol: float = RTOL32) -> None:
    assert set(stats) == set(ref), f"keys {sorted(stats)} != reference keys {sorted(ref)}"
    for key, expected in ref.items():
        value = stats[key]
        assert value.dtype == torch.float32, f"{key} is {value.dtype}, statistics must be float32"
        assert torch.isfinite(value).all(), f"{key} has non-finite values"
        assert_close(value, expected, atol=atol, rtol=rtol, name=key)


def assert_same_stats(actual: dict, expected: dict, keys: Iterable[str], *, tol: float = 1e-6) -> None:
    """Statistics ``keys`` of two runs on the same inputs by different paths agree to ``tol``."""
    for key in keys:
        assert_close(actual[key], expected[key], atol=tol, rtol=tol, name=key)


def probs64(q, k, *, scale=None, attn_mask=None, is_causal=False) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent float64 softmax map and visibility (not masked) of every (query, key) pair."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q.double() @ k.transpose(-1, -2)) * scale
    visible = torch.ones_like(logits, dtype=torch.bool)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            visible = visible & attn_mask
        else:
            logits = logits + attn_mask.double()
            visible = visible & (attn_mask != float("-inf"))
    if is_causal:
        visible = visible & torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
    return probs, visible


def top_counts_exact(num_visible: int) -> list[int]:
    """ceil(f * n) with exact rational arithmetic, at least 1."""
    return [max(1, math.ceil(f * num_visible)) for f in FRACTIONS]


def definitional_stats(p: torch.Tensor, visible: torch.Tensor, layout: TokenLayout | None) -> dict:
    """Every statistic straight from its definition, written independently of the library."""
    batch, heads, num_q, num_k = p.shape
    logp = torch.where(p > 0, p.clamp_min(1e-300).log(), torch.zeros_like(p))
    out: dict[str, torch.Tensor] = {"entropy": -(p * logp).sum(-1), "received": p.sum(-2)}

    sorted_cum = p.sort(dim=-1, descending=True).values.cumsum(-1)
    n_visible = visible.expand_as(p).sum(-1)
    top = torch.zeros(batch, heads, len(FRACTIONS), dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            rows = 0
            for i in range(num_q):
                n = int(n_visible[b, h, i])
                if n == 0:
                    continue
                rows += 1
                for j, c in enumerate(top_counts_exact(n)):
                    top[b, h, j] += sorted_cum[b, h, i, c - 1]
            top[b, h] /= max(rows, 1)
    out["topk_mass"] = top

    if layout is None:
        return out
    frames, height, width = layout.grid
    hw = height * width
    token = torch.arange(num_k)
    is_video = (token >= layout.video_start) & (token < layout.video_stop)
    rel = (token - layout.video_start).clamp(min=0)
    frame, y, x = rel // hw, (rel % hw) // width, rel % width
    is_text = torch.zeros(num_k, dtype=torch.bool)
    if layout.text is not None:
        is_text[layout.text[0] : layout.text[1]] = True
    pv = p[:, :, is_video]  # (B, H, Nv, Nk) video queries
    nv = layout.num_video
    fq, yq, xq = frame[is_video], y[is_video], x[is_video]

    frame_map = torch.zeros(batch, heads, frames, frames, dtype=torch.float64)
    for i in range(frames):
        for j in range(frames):
            on_frame_j = is_video & (frame == j)
            frame_map[:, :, i, j] = pv[:, :, fq == i][..., on_frame_j].sum(-1).mean(-1)
    out["frame_map"] = frame_map
    out["text_mass"] = pv[..., is_text].sum(-1).mean(-1)
    if layout.text is not None:
        out["text_received"] = pv[..., is_text].sum(-2) / nv

    both_video = is_video[None, :]
    dt = (frame[None, :] - fq[:, None]).abs()
    out["locality_time"] = torch.stack(
        [(pv * (both_video & (dt == d))).sum((-1, -2)) / nv for d in range(frames)], dim=-1
    )
    same_frame = both_video & (dt == 0)
    same_place = both_video & (dt > 0) & (y[None, :] == yq[:, None]) & (x[None, :] == xq[:, None])
    out["same_position_mass"] = (pv * same_place).sum((-1, -2)) / nv
    dy = y[None, :] - yq[:, None]
    dx = x[None, :] - xq[:, None]
    offsets = torch.zeros(batch, heads, 2 * height - 1, 2 * width - 1, dtype=torch.float64)
    for oy in range(-(height - 1), height):
        for ox in range(-(width - 1), width):
            sel = same_frame & (dy == oy) & (dx == ox)
            offsets[:, :, oy + height - 1, ox + width - 1] = (pv * sel).sum((-1, -2)) / nv
    out["spatial_offsets"] = offsets
    ring = torch.maximum(dy.abs(), dx.abs())
    out["locality_space"] = torch.stack(
        [(pv * (same_frame & (ring == r))).sum((-1, -2)) / nv for r in range(max(height, width))], dim=-1
    )
    return out


# ----------------------------------------------------------------------------------------------
# output against SDPA


MASK_KINDS = ["none", "bool_key_padding", "float_key_padding_inf", "bool_full", "float_full_inf", "float_2d", "causal"]


def make_mask(kind: str, batch: int, heads: int, num_q: int, num_k: int, seed: int = 1):
    """(attn_mask, is_causal) of one kind; every query keeps at least one visible key."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    if kind == "bool_key_padding":
        mask = torch.ones(batch, 1, 1, num_k, dtype=torch.bool)
        for b in range(batch):
            mask[b, ..., num_k - 3 - 4 * b :] = False  # a different padding length per batch element
        return mask, False
    if kind == "float_key_padding_inf":
        mask = torch.randn(batch, 1, 1, num_k, generator=gen)
        mask[0, ..., -5:] = float("-inf")
        mask[-1, ..., 2:6] = float("-inf")
        return mask, False
    if kind == "bool_full":
        mask = torch.rand(batch, heads, num_q, num_k, generator=gen) < 0.6
        mask[..., 0] = True
        return mask, False
    if kind == "float_full_inf":
        mask = torch.randn(batch, heads, num_q, num_k, generator=gen) * 2
        mask = mask.masked_fill(torch.rand(batch, heads, num_q, num_k, generator=gen) < 0.3, float("-inf"))
        mask[..., -1] = 0.0
        return mask, False
    if kind == "float_2d":
        mask = torch.randn(num_q, num_k, generator=gen)
        mask[:, 1::3] = float("-inf")
        return mask, False
    raise AssertionError(kind)


@pytest.mark.parametrize("chunk_size", [1, 13, None])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_output_matches_sdpa_with_masks(mask_kind, chunk_size):
    q, k, v = make_qkv(2, 3, 37, 24, seed=3)
    mask, causal = make_mask(mask_kind, 2, 3, 37, 37)
    out, stats = attention_stats(q, k, v, attn_mask=mask, is_causal=causal, chunk_size=chunk_size)
    assert out.dtype == torch.float32
    assert_close(out, sdpa64(q, k, v, attn_mask=mask, is_causal=causal), name="out")
    assert isinstance(stats, AttentionStats)


@pytest.mark.parametrize("chunk_size", [1, 13, None])
@pytest.mark.parametrize("mask_kind", ["none", "bool_key_padding", "float_full_inf", "causal"])
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 2), (6, 1), (3, 3)])
def test_output_matches_sdpa_grouped_query_heads(q_heads, kv_heads, mask_kind, chunk_size):
    q, k, v = make_qkv(2, q_heads, 29, 16, kv_heads=kv_heads, dim_v=11, seed=4)
    mask, causal = make_mask(mask_kind, 2, q_heads, 29, 29)
    out, stats = attention_stats(q, k, v, attn_mask=mask, is_causal=causal, chunk_size=chunk_size)
    assert out.shape == (2, q_heads, 29, 11)
    assert_close(out, sdpa64(q, k, v, attn_mask=mask, is_causal=causal), name="out")
    _, ref = dense_attention_stats(q, k, v, attn_mask=mask, is_causal=causal)
    assert_stats_match_reference(stats, ref)


@pytest.mark.parametrize("chunk_size", [1, 13, None])
@pytest.mark.parametrize("mask_kind", ["none", "bool_key_padding", "float_full_inf", "causal"])
@pytest.mark.parametrize(("num_q", "num_k"), [(19, 41), (41, 19), (1, 23), (23, 1)])
def test_cross_attention_matches_sdpa_and_reference(num_q, num_k, mask_kind, chunk_size):
    if mask_kind == "bool_key_padding" and num_k < 8:
        pytest.skip("padding needs more keys")
    q, k, v = make_qkv(2, 2, num_q, 12, num_k=num_k, dim_v=9, seed=5)
    mask, causal = make_mask(mask_kind, 2, 2, num_q, num_k)
    out, stats = attention_stats(q, k, v, attn_mask=mask, is_causal=causal, chunk_size=chunk_size)
    assert out.shape == (2, 2, num_q, 9)
    assert_close(out, sdpa64(q, k, v, attn_mask=mask, is_causal=causal), name="out")
    assert stats.entropy.shape == (2, 2, num_q)
    assert stats.received.shape == (2, 2, num_k)
    _, ref = dense_attention_stats(q, k, v, attn_mask=mask, is_causal=causal)
    assert_stats_match_reference(stats, ref)


@pytest.mark.parametrize("scale", [0.05, 0.5, 1.0])
def test_custom_scale_matches_sdpa_and_reference(scale):
    q, k, v = make_qkv(1, 2, 33, 8, seed=6)
    out, stats = attention_stats(q, k, v, scale=scale, chunk_size=7)
    assert_close(out, sdpa64(q, k, v, scale=scale), name="out")
    _, ref = dense_attention_stats(q, k, v, scale=scale)
    assert_stats_match_reference(stats, ref)


# ----------------------------------------------------------------------------------------------
# statistics against the dense float64 reference and the definitions


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_stats_match_dense_reference(layout_name, chunk_size):
    n, layout = LAYOUTS[layout_name]
    q, k, v = make_qkv(2, 3, n, 24, seed=7)
    out, stats = attention_stats(q, k, v, layout=layout, chunk_size=chunk_size)
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout)
    assert_close(out, ref_out, name="out")
    assert_close(out, sdpa64(q, k, v), name="out vs sdpa")
    assert_stats_match_reference(stats, ref)
    assert stats.top_mass_method == "exact"
    # the statistics are informative: attention is peaked, far from uniform
    assert float(stats.topk_mass[..., 0].min()) > 0.2


@pytest.mark.parametrize("layout_name", ["text_before_video", "text_after_video", "video_text_and_other", "no_layout"])
def test_stats_match_their_definitions(layout_name):
    """Checks the reference's shared helpers too (frame_distance_profile, ring_profile, top_counts)."""
    n, layout = LAYOUTS[layout_name]
    q, k, v = make_qkv(2, 2, n, 24, seed=8)
    _, stats = attention_stats(q, k, v, layout=layout, chunk_size=13)
    p, visible = probs64(q, k)
    expected = definitional_stats(p, visible, layout)
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert_close(stats[key], value, name=key)


@pytest.mark.parametrize("chunk_size", [1, 13, None])
@pytest.mark.parametrize("tiles", [1, 4, 11, 64, 500])
@pytest.mark.parametrize("layout_name", ["text_before_video", "video_text_and_other"])
def test_token_map_matches_reference_and_definition(layout_name, tiles, chunk_size):
    """Tiles of unequal last size (105 video tokens into 4, 11, 64 tiles), more tiles than tokens."""
    n, layout = LAYOUTS[layout_name]
    q, k, v = make_qkv(2, 3, n, 16, seed=21)
    _, stats = attention_stats(q, k, v, layout=layout, chunk_size=chunk_size, map_tiles=tiles)
    _, ref = dense_attention_stats(q, k, v, layout=layout, map_tiles=tiles)
    size, count = layout.tiles(tiles)
    assert stats.token_map.shape == (2, 3, count, count) and count <= tiles
    assert_close(stats.token_map, ref["token_map"], name="token_map")
    # definition by loops over tiles: mean over the tile's video queries of the mass on each tile
    p, _ = probs64(q, k)
    video = p[:, :, layout.video_start : layout.video_stop, layout.video_start : layout.video_stop]
    for a in range(count):
        for c in range(0, count, max(1, count // 5)):
            block = video[:, :, a * size : (a + 1) * size, c * size : (c + 1) * size]
            assert_close(stats.token_map[:, :, a, c], block.sum(-1).mean(-1), name=f"token_map[{a}, {c}]")
    # rows hold the mass on video keys: they sum to 1 - text mass (up to non-video tokens)
    if layout_name == "text_before_video":
        rows = (stats.token_map.sum(-1) * torch.tensor([min(size, 105 - a * size) for a in range(count)])).sum(-1)
        assert_close(rows / 105, 1 - stats.text_mass, name="token_map mass")


def test_token_map_is_absent_by_default_and_rejects_zero_tiles():
    n, layout = LAYOUTS["video_only"]
    q, k, v = make_qkv(1, 2, n, 16, seed=22)
    _, stats = attention_stats(q, k, v, layout=layout)
    assert "token_map" not in stats
    with pytest.raises(ValueError, match="tiles"):
        attention_stats(q, k, v, layout=layout, map_tiles=0)


def test_non_contiguous_inputs_give_the_same_results():
    """q, k, v are often (B, N, H, D) tensors viewed as (B, H, N, D)."""
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 16, seed=23)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    out, stats = attention_stats(q, k, v, layout=layout, chunk_size=13)
    out_v, stats_v = attention_stats(*views, layout=layout, chunk_size=13)
    assert_close(out_v, out, atol=1e-6, rtol=1e-6, name="out")
    assert_same_stats(stats_v, stats, stats)


def test_stat_shapes_dtypes_and_attribute_access():
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 3, n, 24, seed=9)
    out, stats = attention_stats(q, k, v, layout=layout)
    frames, height, width = GRID
    shapes = {
        "entropy": (2, 3, n),
        "received": (2, 3, n),
        "topk_mass": (2, 3, len(TOP_FRACTIONS)),
        "frame_map": (2, 3, frames, frames),
        "text_mass": (2, 3),
        "text_received": (2, 3, NUM_TEXT),
        "locality_time": (2, 3, frames),
        "spatial_offsets": (2, 3, 2 * height - 1, 2 * width - 1),
        "locality_space": (2, 3, max(height, width)),
        "same_position_mass": (2, 3),
    }
    assert out.shape == q.shape and out.dtype == q.dtype
    assert set(stats) == set(shapes)
    for key, shape in shapes.items():
        assert stats[key].shape == shape, key
        assert stats[key].dtype == torch.float32, key
        assert getattr(stats, key) is stats[key]
    assert tuple(TOP_FRACTIONS) == tuple(float(f) for f in FRACTIONS)
    with pytest.raises(AttributeError):
        _ = stats.no_such_statistic


def test_video_only_layout_has_zero_text_mass_and_no_text_received():
    n, layout = LAYOUTS["video_only"]
    q, k, v = make_qkv(1, 2, n, 24, seed=10)
    _, stats = attention_stats(q, k, v, layout=layout)
    assert "text_received" not in stats
    assert torch.equal(stats.text_mass, torch.zeros(1, 2))
    assert_close(stats.frame_map.sum(-1), torch.ones(1, 2, GRID[0]), name="frame_map rows")


def test_spatial_false_drops_spatial_stats_and_keeps_the_rest():
    n, layout = LAYOUTS["text_after_video"]
    q, k, v = make_qkv(1, 2, n, 24, seed=11)
    _, with_space = attention_stats(q, k, v, layout=layout, chunk_size=13)
    _, without = attention_stats(q, k, v, layout=layout, chunk_size=13, spatial=False)
    assert "spatial_offsets" not in without and "locality_space" not in without
    assert set(with_space) - set(without) == {"spatial_offsets", "locality_space"}
    assert_same_stats(without, with_space, without)


@pytest.mark.parametrize("chunk_size", [1, 13, None])
@pytest.mark.parametrize(
    "mask_kind", ["bool_key_padding", "float_key_padding_inf", "bool_full", "float_full_inf", "causal"]
)
@pytest.mark.parametrize("layout_name", ["text_before_video", "text_after_video"])
def test_stats_with_masks_match_dense_reference(layout_name, mask_kind, chunk_size):
    n, layout = LAYOUTS[layout_name]
    q, k, v = make_qkv(2, 2, n, 16, seed=12)
    mask, causal = make_mask(mask_kind, 2, 2, n, n)
    out, stats = attention_stats(q, k, v, layout=layout, attn_mask=mask, is_causal=causal, chunk_size=chunk_size)
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask, is_causal=causal)
    assert_close(out, ref_out, name="out")
    assert_stats_match_reference(stats, ref)
    p, visible = probs64(q, k, attn_mask=mask, is_causal=causal)
    assert_close(stats.topk_mass, definitional_stats(p, visible, None)["topk_mass"], name="topk_mass (definition)")


def test_grouped_query_heads_with_layout_match_reference():
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 4, n, 16, kv_heads=2, seed=13)
    out, stats = attention_stats(q, k, v, layout=layout, chunk_size=13)
    _, ref = dense_attention_stats(q, k, v, layout=layout)
    assert_close(out, sdpa64(q, k, v), name="out")
    assert_stats_match_reference(stats, ref)


# ----------------------------------------------------------------------------------------------
# half precision, compute_output, top-mass modes


@pytest.mark.parametrize("chunk_size", [13, None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype, chunk_size):
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 24, dtype=dtype, seed=14)
    mask, _ = make_mask("bool_key_padding", 2, 2, n, n)
    out, stats = attention_stats(q, k, v, layout=layout, chunk_size=chunk_size, attn_mask=mask)
    # the reference from the same half inputs, upcast
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask)
    assert out.dtype == dtype
    # out is rounded to the half type: within a couple of its ulps of the exact value
    rtol = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert_close(out, ref_out, atol=2e-3, rtol=rtol, name="out")
    # statistics are accumulated in float32, far more precise than the half inputs
    assert_stats_match_reference(stats, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout_name", ["text_before_video", "no_layout"])
def test_compute_output_false_returns_none_and_same_stats(layout_name):
    n, layout = LAYOUTS[layout_name]
    q, k, v = make_qkv(2, 2, n, 24, seed=15)
    mask, _ = make_mask("float_key_padding_inf", 2, 2, n, n)
    out, stats = attention_stats(q, k, v, layout=layout, attn_mask=mask, chunk_size=13)
    none, stats_only = attention_stats(q, k, v, layout=layout, attn_mask=mask, chunk_size=13, compute_output=False)
    assert out is not None and none is None
    assert set(stats_only) == set(stats)
    assert_same_stats(stats_only, stats, stats)


def test_top_mass_off_has_no_topk_key():
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(1, 2, n, 24, seed=16)
    out_off, off = attention_stats(q, k, v, layout=layout, top_mass="off")
    out_on, on = attention_stats(q, k, v, layout=layout)
    assert "topk_mass" not in off
    assert set(on) - set(off) == {"topk_mass"}
    assert off.top_mass_method == "off"
    assert_close(out_off, out_on, atol=1e-6, rtol=1e-6, name="out")
    assert_same_stats(off, on, off)


@pytest.mark.parametrize("mode", ["auto", "exact", "estimate"])
def test_top_mass_modes_on_small_input_match_reference(mode):
    """Below 2,048 queries "auto" is exact; "estimate" measures every row when there are few."""
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 24, seed=17)
    _, stats = attention_stats(q, k, v, layout=layout, top_mass=mode, chunk_size=13)
    _, ref = dense_attention_stats(q, k, v, layout=layout)
    assert stats.top_mass_method == ("estimate" if mode == "estimate" else "exact")
    assert_close(stats.topk_mass, ref["topk_mass"], name="topk_mass")


def structured_qkv(num: int, heads: int, dim: int, seed: int):
    """Local attention (near the diagonal) from positional features, two sink keys and noise.

    Rows differ in sharpness so the per-row top masses vary and a small sample is not enough.
    """
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(num, dtype=torch.float64)[:, None]
    periods = torch.logspace(math.log10(8), math.log10(2 * num), 8, dtype=torch.float64)
    pos = torch.cat([torch.cos(2 * math.pi * t / periods), torch.sin(2 * math.pi * t / periods)], dim=1)
    qs, ks = [], []
    for h in range(heads):
        sharp = torch.empty(num, 1, dtype=torch.float64).uniform_(0.3, 1.5, generator=gen) * (1.0 + h)
        qh = torch.zeros(num, dim, dtype=torch.float64)
        kh = torch.zeros(num, dim, dtype=torch.float64)
        qh[:, :16] = pos * sharp
        kh[:, :16] = pos
        qh[:, 16:-1] = torch.randn(num, dim - 17, generator=gen, dtype=torch.float64)
        kh[:, 16:-1] = torch.randn(num, dim - 17, generator=gen, dtype=torch.float64)
        qh[:, -1] = torch.empty(num, dtype=torch.float64).uniform_(0.0, 2.0, generator=gen)
        kh[[0, num // 2], -1] = 6.0  # sinks
        qs.append(qh)
        ks.append(kh)
    q = (torch.stack(qs)[None] * 2.0).float()
    k = (torch.stack(ks)[None] * 2.0).float()
    v = torch.randn(1, heads, num, dim, generator=gen)
    return q, k, v


def test_top_mass_estimate_is_close_to_exact_on_structured_input():
    q, k, v = structured_qkv(3000, 2, 32, seed=0)
    _, exact = attention_stats(q, k, v, top_mass="exact", compute_output=False)
    _, estimate = attention_stats(q, k, v, top_mass="estimate", compute_output=False)
    _, auto = attention_stats(q, k, v, compute_output=False)
    assert exact.top_mass_method == "exact"
    assert estimate.top_mass_method == "estimate"
    assert auto.top_mass_method == "estimate"  # above 2,048 queries
    assert_close(auto.topk_mass, estimate.topk_mass, atol=1e-6, rtol=0, name="auto vs estimate")
    error = (estimate.topk_mass - exact.topk_mass).abs().max().item()
    print(f"max |estimate - exact| top mass: {error:.5f}")
    assert error < 0.01, f"estimate off by {error}"
    # the other statistics do not depend on the top-mass mode
    assert_same_stats(estimate, exact, ("entropy", "received"))
    # the input is a real test: top masses vary across rows and are not trivially 0 or 1
    assert 0.3 < float(exact.topk_mass[..., 0].min()) < 0.95


def test_top_mass_estimate_is_close_to_exact_with_causal_mask():
    """Above 2,048 queries "auto" estimates; with a causal mask the rows see 1..N keys, so their
    top masses vary with the row index, which the entropy / max-weight control variates miss."""
    q, k, v = structured_qkv(3000, 1, 32, seed=1)
    _, exact = attention_stats(q, k, v, is_causal=True, top_mass="exact", compute_output=False)
    _, auto = attention_stats(q, k, v, is_causal=True, compute_output=False)
    assert auto.top_mass_method == "estimate"
    error = (auto.topk_mass - exact.topk_mass).abs().max().item()
    assert error < 0.01, f"causal estimate off by {error:.4f} (exact {exact.topk_mass.tolist()})"


# ----------------------------------------------------------------------------------------------
# masking semantics


@pytest.mark.parametrize("chunk_size", [1, 13, None])
def test_masked_keys_receive_zero_and_are_excluded_from_top_counts(chunk_size):
    num, visible_keys = 40, 23
    q, k, v = make_qkv(2, 2, num, 8, seed=18)
    mask = torch.zeros(2, 1, 1, num, dtype=torch.bool)
    keep = torch.randperm(num, generator=torch.Generator().manual_seed(0))[:visible_keys]
    mask[..., keep] = True
    _, stats = attention_stats(q, k, v, attn_mask=mask, chunk_size=chunk_size)
    hidden = ~mask[0, 0, 0]
    assert torch.equal(stats.received[..., hidden], torch.zeros_like(stats.received[..., hidden]))
    assert_close(stats.received.sum(-1), torch.full((2, 2), float(num)), name="received sum")
    # top counts ceil(f * 23) = 1, 2, 3, 5, 12 of the visible keys (not of all 40 keys)
    p, _ = probs64(q, k, attn_mask=mask)
    cum = p.sort(-1, descending=True).values.cumsum(-1)
    expected = cum[..., [c - 1 for c in top_counts_exact(visible_keys)]].mean(-2)
    assert top_counts_exact(visible_keys) == [1, 2, 3, 5, 12]
    assert_close(stats.topk_mass, expected, name="topk_mass")
    # with uniform attention over the visible keys the top mass is exactly count / visible
    zeros = torch.zeros_like(q)
    _, uniform = attention_stats(zeros, k, v, attn_mask=mask, chunk_size=chunk_size)
    counts = torch.tensor(top_counts_exact(visible_keys), dtype=torch.float64) / visible_keys
    assert_close(uniform.topk_mass, counts.expand(2, 2, 5), name="uniform topk_mass")
    assert_close(uniform.entropy, torch.full((2, 2, num), math.log(visible_keys)), name="uniform entropy")


def test_causal_top_counts_use_the_visible_prefix():
    q = torch.zeros(1, 1, 30, 4)
    k, v = torch.randn(1, 1, 30, 4), torch.randn(1, 1, 30, 4)
    _, stats = attention_stats(q, k, v, is_causal=True, chunk_size=7)
    # row i attends uniformly to i + 1 keys
    expected = torch.tensor(
        [[c / (i + 1) for c in top_counts_exact(i + 1)] for i in range(30)], dtype=torch.float64
    ).mean(0)
    assert_close(stats.topk_mass[0, 0], expected, name="topk_mass")
    assert_close(stats.entropy[0, 0], torch.log(torch.arange(1, 31, dtype=torch.float64)), name="entropy")


@pytest.mark.parametrize("chunk_size", [1, 4, 13, None])
def test_fully_masked_rows_give_finite_stats(chunk_size):
    """Some query rows see no key at all: no NaN, zero entropy, excluded from top-k means."""
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 16, seed=19)
    mask = torch.ones(2, 2, n, n, dtype=torch.bool)
    mask[0, :, 3:5] = False  # two fully masked rows inside a chunk
    mask[1, 1, :4] = False  # a whole first chunk of 4 rows masked when chunk_size == 4
    mask[1, 0, 40] = False
    out, stats = attention_stats(q, k, v, layout=layout, attn_mask=mask, chunk_size=chunk_size)
    _, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert_close(out, sdpa64(q, k, v, attn_mask=mask), name="out")  # SDPA gives 0 for fully masked rows
    assert_stats_match_reference(stats, ref)
    assert torch.equal(stats.entropy[0, :, 3:5], torch.zeros(2, 2))


@pytest.mark.parametrize("chunk_size", [1, 13, None])
def test_fully_masked_batch_element_gives_finite_stats(chunk_size):
    """A key padding mask that hides every key of one batch element (every row of every chunk)."""
    q, k, v = make_qkv(2, 2, 20, 8, seed=20)
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    mask[1] = False
    out, stats = attention_stats(q, k, v, attn_mask=mask, chunk_size=chunk_size)
    _, ref = dense_attention_stats(q, k, v, attn_mask=mask)
    assert_close(out, sdpa64(q, k, v, attn_mask=mask), name="out")
    assert_stats_match_reference(stats, ref)
    assert torch.equal(stats.topk_mass[1], torch.zeros(2, 5))
    assert torch.equal(stats.received[1], torch.zeros(2, 20))


@pytest.mark.parametrize("neg", ["float32_min", -1e4, "float16_min"])
def test_additive_mask_with_large_finite_negative_matches_reference(neg):
    """Additive masks often use a large finite negative (e.g. torch.finfo(float16).min, as HF does
    for half models) instead of -inf: those keys get exactly zero weight, and the dense reference
    drops them from the top-k counts."""
    q, k, v = make_qkv(2, 2, 30, 8, seed=21)
    dtype = torch.float16 if neg == "float16_min" else torch.float32
    value = torch.finfo(dtype).min if isinstance(neg, str) else neg
    mask = torch.zeros(2, 1, 1, 30, dtype=dtype)
    mask[..., 17:] = value
    out, stats = attention_stats(q, k, v, attn_mask=mask, chunk_size=13)
    _, ref = dense_attention_stats(q, k, v, attn_mask=mask)
    assert_close(out, sdpa64(q, k, v, attn_mask=mask.float()), name="out")
    assert torch.equal(stats.received[..., 17:], torch.zeros(2, 2, 13))
    assert_stats_match_reference(stats, ref)


# ----------------------------------------------------------------------------------------------
# input validation


def _bad_calls():
    q, k, v = make_qkv(1, 2, 10, 8, seed=22)
    layout = TokenLayout(2, 2, 2, video_start=0, text=(8, 10))
    return {
        "3-D q": lambda: attention_stats(q[0], k, v),
        "3-D k and v": lambda: attention_stats(q, k[0], v[0]),
        "head dims differ": lambda: attention_stats(q, k[..., :6], v),
        "q heads not a multiple of kv heads": lambda: attention_stats(torch.randn(1, 3, 10, 8), k, v),
        "k and v lengths differ": lambda: attention_stats(q, k, v[:, :, :9]),
        "batch sizes differ": lambda: attention_stats(torch.cat([q, q]), k, v),
        "layout with Nq != Nk": lambda: attention_stats(q[:, :, :9], k, v, layout=layout),
        "layout video does not fit": lambda: attention_stats(q, k, v, layout=TokenLayout(3, 2, 2)),
        "layout text does not fit": lambda: attention_stats(q, k, v, layout=TokenLayout(2, 2, 2, text=(8, 11))),
        "unknown top_mass mode": lambda: attention_stats(q, k, v, top_mass="approx"),
        "mask keys do not broadcast": lambda: attention_stats(
            q, k, v, attn_mask=torch.ones(1, 1, 1, 9, dtype=torch.bool)
        ),
        "mask heads do not broadcast": lambda: attention_stats(q, k, v, attn_mask=torch.zeros(1, 3, 10, 10)),
        "mask batch does not broadcast": lambda: attention_stats(q, k, v, attn_mask=torch.zeros(2, 1, 10, 10)),
        "negative chunk size": lambda: attention_stats(q, k, v, chunk_size=-1),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_raises_value_error(case):
    with pytest.raises(ValueError):
        _bad_calls()[case]()


# ----------------------------------------------------------------------------------------------
# properties (hypothesis)

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def attention_inputs(draw, *, same_length: bool = False):
    batch = draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3)) if kv_heads == 1 else 1
    num_q = draw(st.integers(1, 40))
    num_k = num_q if same_length else draw(st.integers(1, 40))
    dim = draw(st.integers(1, 16))
    sharpness = draw(st.sampled_from([0.0, 1.0, 3.0]))
    seed = draw(st.integers(0, 2**16))
    chunk = draw(st.one_of(st.none(), st.integers(1, 50)))
    q, k, v = make_qkv(
        batch,
        kv_heads * group,
        num_q,
        dim,
        kv_heads=kv_heads,
        num_k=num_k,
        dim_v=draw(st.integers(1, 9)),
        sharpness=sharpness,
        seed=seed,
    )
    return q, k, v, chunk


@PROPERTY_SETTINGS
@given(attention_inputs())
def test_property_masses_entropy_and_top_mass_are_consistent(inputs):
    q, k, v, chunk = inputs
    num_q, num_k = q.shape[2], k.shape[2]
    out, stats = attention_stats(q, k, v, chunk_size=chunk)
    assert_close(stats.received.sum(-1), torch.full(q.shape[:2], float(num_q)), atol=1e-4, name="received")
    assert (stats.received >= 0).all()
    assert (stats.entropy >= -1e-5).all()
    assert (stats.entropy <= math.log(num_k) + 1e-5).all()
    top = stats.topk_mass
    assert (top[..., 1:] >= top[..., :-1] - 1e-6).all(), "top mass must grow with the fraction"
    assert (top <= 1 + 1e-6).all() and (top > 0).all()
    assert (top[..., 0] >= 1.0 / num_k - 1e-6).all()  # the largest weight is at least the mean weight
    assert_close(out, sdpa64(q, k, v), name="out")


@PROPERTY_SETTINGS
@given(attention_inputs(), st.randoms(use_true_random=False))
def test_property_key_and_query_permutations(inputs, rnd):
    q, k, v, chunk = inputs
    num_q, num_k = q.shape[2], k.shape[2]
    key_perm = torch.tensor(rnd.sample(range(num_k), num_k))
    query_perm = torch.tensor(rnd.sample(range(num_q), num_q))
    out, stats = attention_stats(q, k, v, chunk_size=chunk)
    out_k, stats_k = attention_stats(q, k[:, :, key_perm], v[:, :, key_perm], chunk_size=chunk)
    assert_close(stats_k.received, stats.received[..., key_perm], name="received (keys permuted)")
    for key in ("entropy", "topk_mass"):
        assert_close(stats_k[key], stats[key], name=f"{key} (keys permuted)")
    assert_close(out_k, out, name="out (keys permuted)")
    out_q, stats_q = attention_stats(q[:, :, query_perm], k, v, chunk_size=chunk)
    assert_close(stats_q.entropy, stats.entropy[..., query_perm], name="entropy (queries permuted)")
    assert_close(out_q, out[:, :, query_perm], name="out (queries permuted)")
    for key in ("received", "topk_mass"):
        assert_close(stats_q[key], stats[key], name=f"{key} (queries permuted)")


@PROPERTY_SETTINGS
@given(attention_inputs(), st.integers(0, 2**16), st.floats(0.0, 0.9))
def test_property_masked_keys_get_nothing(inputs, seed, hide):
    """Random boolean masks (every query keeps one visible key): hidden keys receive exactly 0, each
    query's mass still sums to one, entropy <= log(visible keys), top mass matches its definition."""
    q, k, v, chunk = inputs
    batch, heads, num_q, num_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, heads, num_q, num_k, generator=gen) >= hide
    mask[..., torch.arange(num_q), torch.randint(num_k, (num_q,), generator=gen)] = True
    out, stats = attention_stats(q, k, v, attn_mask=mask, chunk_size=chunk)
    never_visible = ~mask.any(dim=2)  # (B, H, Nk)
    assert torch.equal(stats.received[never_visible], torch.zeros(int(never_visible.sum())))
    assert_close(stats.received.sum(-1), torch.full((batch, heads), float(num_q)), atol=1e-4, name="received")
    assert (stats.entropy <= mask.sum(-1).double().log() + 1e-5).all()
    p, visible = probs64(q, k, attn_mask=mask)
    assert_close(stats.topk_mass, definitional_stats(p, visible, None)["topk_mass"], name="topk_mass")
    assert_close(out, sdpa64(q, k, v, attn_mask=mask), name="out")


@st.composite
def layout_inputs(draw):
    frames, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    num_video = frames * height * width
    num_text = draw(st.integers(0, max(0, 40 - num_video)))
    place = draw(st.sampled_from(["before", "after", "none"]))
    if place == "none" or num_text == 0:
        layout, n = TokenLayout(frames, height, width), num_video
    elif place == "before":
        layout, n = TokenLayout(frames, height, width, video_start=num_text, text=(0, num_text)), num_video + num_text
    else:
        layout = TokenLayout(frames, height, width, text=(num_video, num_video + num_text))
        n = num_video + num_text
    q, k, v = make_qkv(
        draw(st.integers(1, 2)),
        draw(st.integers(1, 3)),
        n,
        draw(st.integers(1, 16)),
        sharpness=draw(st.sampled_from([0.0, 1.0, 3.0])),
        seed=draw(st.integers(0, 2**16)),
    )
    return q, k, v, layout, draw(st.one_of(st.none(), st.integers(1, 50)))


@PROPERTY_SETTINGS
@given(layout_inputs())
def test_property_layout_masses_add_up(inputs):
    """The layout covers the whole sequence: each video query's mass splits into frames and text."""
    q, k, v, layout, chunk = inputs
    _, stats = attention_stats(q, k, v, layout=layout, chunk_size=chunk)
    per_query = stats.frame_map.sum(-1)  # (B, H, F): mass on video keys per query frame
    if layout.text is None:
        assert_close(per_query, torch.ones_like(per_query), name="frame_map rows (video only)")
        assert torch.equal(stats.text_mass, torch.zeros_like(stats.text_mass))
    else:
        assert_close(per_query.mean(-1) + stats.text_mass, torch.ones(q.shape[:2]), name="video + text mass")
        assert_close(stats.text_received.sum(-1), stats.text_mass, name="text_received")
    assert_close(stats.locality_time.sum(-1), per_query.mean(-1), name="locality_time")
    same_frame = torch.diagonal(stats.frame_map, dim1=-2, dim2=-1).mean(-1)
    assert_close(stats.spatial_offsets.sum((-1, -2)), same_frame, name="spatial_offsets")
    assert_close(stats.locality_space.sum(-1), same_frame, name="locality_space")
    assert (stats.frame_map >= 0).all() and (stats.spatial_offsets >= 0).all()


# ----------------------------------------------------------------------------------------------
# memory: the streaming path never holds an N x N map

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, torch
    torch.set_num_threads(1)
    from vditscope import attention_stats
    from vditscope.stats.reference import dense_probabilities

    def status(field):  # bytes; VmHWM: peak resident set since the last reset, VmRSS: resident set now
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no " + field)

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    n = 4096
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 32, generator=g) for _ in range(3))
    attention_stats(q[:, :, :300], k[:, :, :300], v[:, :, :300], chunk_size=128)  # warm up
    reset_peak(); base = status("VmRSS")
    out, stats = attention_stats(q, k, v, chunk_size=128)
    streaming = status("VmHWM") - base
    reset_peak(); base = status("VmRSS")
    p = dense_probabilities(q, k, dtype=torch.float32)  # calibration: a dense map must show
    dense = status("VmHWM") - base
    print(json.dumps({"streaming": streaming, "dense": dense, "method": stats.top_mass_method}))
    """
)


def test_streaming_does_not_allocate_an_n_by_n_map():
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to measure the peak resident set")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0 and "clear_refs" in result.stderr:
        pytest.skip(f"cannot reset the peak resident set: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    sizes = json.loads(result.stdout.strip().splitlines()[-1])
    n_by_n = 4096 * 4096 * 4  # one float32 N x N map: 64 MiB
    assert sizes["dense"] >= n_by_n, f"measurement does not see a dense map: {sizes}"
    # buffers of chunk x N floats only (about 10 MiB here), far below one N x N map
    assert sizes["streaming"] < n_by_n / 2, f"streaming peak grew by {sizes['streaming'] / 2**20:.1f} MiB"
