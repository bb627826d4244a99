"""Block-sparse attention: the block selection covers every visible pair, the token-level windows make
it equal to the dense masked softmax, and compiled FlexAttention (on CPU) gives the same output."""

from __future__ import annotations

import math

import pytest
import torch

from vditscope.layout import TokenLayout
from vditscope.stats.block_sparse import (
    FLEX_TIMINGS,
    BlockSelection,
    arrangement,
    block_sparse_attention,
    build_block_mask,
    frame_alignment_pays,
    kept_entries,
    mass_blocks,
    window_blocks,
    window_full_blocks,
)
from vditscope.stats.structured import DEFAULT_WINDOWS, structured_attention, window_mask

# 7 text tokens, then 3 x 5 x 7 video tokens, then 4 trailing tokens: 116, not a multiple of the block
LAYOUT = TokenLayout(3, 5, 7, video_start=7, text=(0, 7))
N = LAYOUT.video_stop + 4
TEXT_AFTER = TokenLayout(3, 5, 7, video_start=0, text=(105, 116))
BLOCK = 16


def qkv(
    heads: int = 4, kv_heads: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, N, 8, dtype=dtype, generator=generator)
    k, v = (torch.randn(1, kv_heads, N, 8, dtype=dtype, generator=generator) for _ in range(2))
    return q, k, v


def dense_masked(q, k, v, visible: torch.Tensor, scale: float) -> torch.Tensor:
    """float64 softmax over the visible keys (visible (H, N, N) or (N, N)), grouped heads expanded."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1).double()
    logits = (q.double() @ k.transpose(-1, -2)) * scale
    return torch.softmax(logits.masked_fill(~visible, -math.inf), -1) @ v


@pytest.mark.parametrize("layout", [LAYOUT, TEXT_AFTER], ids=["text-before", "text-after"])
@pytest.mark.parametrize("window", [(0, 99, 99), (99, 0, 0), (1, 1, 2), (0, 1, 1)])
@pytest.mark.parametrize("aligned", [True, False])
def test_window_blocks_hold_every_visible_pair(layout, window, aligned) -> None:
    visible = window_mask(layout, N, torch.arange(N), window)
    kept = window_blocks(layout, N, window, BLOCK, aligned)
    block_of = arrangement(layout, N, BLOCK, aligned).positions // BLOCK
    blocks = kept[block_of[:, None], block_of[None, :]]
    assert not (visible & ~blocks).any()
    assert kept.float().mean() < 1.0 or window == (99, 0, 0)
    # full pairs: every query of the block sees every key of the other (padding keys are in no full pair)
    full = window_full_blocks(layout, N, window, BLOCK, aligned)
    assert full.any() and not (full & ~kept).any()
    padded = torch.zeros(kept.shape[1] * BLOCK, dtype=torch.bool)
    padded[arrangement(layout, N, BLOCK, aligned).positions] = True
    assert not full[:, ~padded.view(-1, BLOCK).all(1)].any()
    assert (visible | ~full[block_of[:, None], block_of[None, :]]).all()


def test_frame_aligned_blocks_hold_one_frame_each() -> None:
    """Text padded to a block, each frame of 35 tokens padded to 48: the same-frame window keeps exactly
    the frame's own blocks (and the text block), the same-position window one block per frame."""
    arranged = arrangement(LAYOUT, N, BLOCK)
    assert arranged.length == 16 + 3 * 48 + 4 and arranged.padded
    assert arranged.positions[:7].tolist() == list(range(7)) and arranged.positions[7] == 16
    assert arranged.positions[7 + 35] == 16 + 48  # first token of frame 1
    assert int(arranged.table[0].sum()) == N and set(arranged.positions.tolist()) == set(
        arranged.table[0].nonzero().flatten().tolist()
    )
    spatial = window_blocks(LAYOUT, N, (0, 99, 99), BLOCK)
    frame_blocks = [list(range(1 + 3 * f, 4 + 3 * f)) for f in range(3)]
    for blocks in frame_blocks:
        for b in blocks:
            assert spatial[b].nonzero().flatten().tolist() == [0, *blocks, 10]
    temporal = window_blocks(LAYOUT, N, (99, 0, 0), BLOCK)
    assert temporal[1].nonzero().flatten().tolist() == [0, 1, 4, 7, 10]


@pytest.mark.parametrize("layout", [LAYOUT, TEXT_AFTER], ids=["text-before", "text-after"])
@pytest.mark.parametrize(("kind", "window"), [("spatial", None), ("temporal", None), ("tiles", (1, 1, 2))])
def test_windows_equal_the_dense_masked_softmax(layout, kind, window) -> None:
    q, k, v = qkv()
    full = window or DEFAULT_WINDOWS[kind]
    visible = window_mask(layout, N, torch.arange(N), full)
    expected = dense_masked(q, k, v, visible, 0.5 / 1.5)
    out, stats, kinds = block_sparse_attention(
        q, k, v, layout=layout, kind=kind, window=window, scale=0.5, temperature=1.5, backend="torch", block=BLOCK
    )
    assert kinds == [kind] * 4
    assert (out.double() - expected).abs().max() < 1e-5
    entries = 1.0 - visible.double().mean()
    assert torch.allclose(stats.entries_dropped.double(), torch.full((1, 4), float(entries), dtype=torch.float64))
    structured, reference, _ = structured_attention(
        q, k, v, layout=layout, kind=kind, window=window, scale=0.5, temperature=1.5
    )
    assert torch.allclose(stats.mass_dropped, reference.mass_dropped, atol=1e-5)
    assert (out - structured).abs().max() < 1e-5


def test_kept_entries_count_the_window_exactly() -> None:
    windows = torch.tensor([[0, 99, 99], [99, 0, 0], [1, 1, 2], [0, 0, 0]])
    keep = torch.stack([window_blocks(LAYOUT, N, tuple(w.tolist()), BLOCK) for w in windows])
    counts = kept_entries(BlockSelection(keep, windows, ["x"] * 4, BLOCK), LAYOUT, N)
    for head, window in enumerate(windows):
        visible = window_mask(LAYOUT, N, torch.arange(N), tuple(window.tolist()))
        assert counts[head] == visible.sum()


def test_block_mass_one_keeps_everything_and_equals_sdpa() -> None:
    q, k, v = qkv()
    out, stats, _ = block_sparse_attention(q, k, v, layout=LAYOUT, kind="blocks", block_mass=1.0, backend="torch")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert (out - expected).abs().max() < 1e-5
    assert stats.entries_dropped.abs().max() == 0
    assert stats.mass_dropped.abs().max() < 1e-6


def test_block_mass_selection_keeps_diagonal_text_and_sinks() -> None:
    q, k, _ = qkv(heads=2, kv_heads=2, dtype=torch.float32)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(1)), dim=0)
    q += 1.5 * direction
    k[0, :, 50] = 6.0 * direction  # one key every query favours: a sink, in block 3
    keep = mass_blocks(q, k, LAYOUT, 1.0, 0.3, BLOCK)
    nb = keep.shape[-1]
    assert keep[:, torch.arange(nb), torch.arange(nb)].all()
    assert keep[:, :, 0].all() and keep[:, 0, :].all()  # block 0 holds the text tokens
    assert keep[:, :, 50 // BLOCK].all()
    sparser = mass_blocks(q, k, LAYOUT, 1.0, 0.05, BLOCK)
    assert (sparser <= keep).all() and sparser.sum() <= keep.sum()


def test_a_block_mass_of_one_keeps_every_block_even_of_a_sharp_head() -> None:
    """At mass 1 the selection is dense: a sharp head (the shipped model's gain-2.5 q/k norms) leaves blocks whose
    mass float32 sums past 1 before reaching them, and those are kept too."""
    q, k, _ = qkv(heads=2, kv_heads=2, dtype=torch.float32)
    sharp = mass_blocks(q * 40.0, k, LAYOUT, 1.0, 1.0, BLOCK)
    assert sharp.all()
    assert not mass_blocks(q * 40.0, k, LAYOUT, 1.0, 0.999, BLOCK).all()  # just under 1 it does drop blocks


def test_blocks_equal_the_dense_masked_softmax_of_their_blocks() -> None:
    q, k, v = qkv()
    out, stats, _ = block_sparse_attention(
        q, k, v, layout=LAYOUT, kind="blocks", block_mass=0.5, backend="torch", block=BLOCK
    )
    keep = mass_blocks(q, k, LAYOUT, 8**-0.5, 0.5, BLOCK)
    index = torch.arange(N) // BLOCK
    visible = keep[:, index[:, None], index[None, :]]
    assert (out.double() - dense_masked(q, k, v, visible, 8**-0.5)).abs().max() < 1e-5
    dense_probs = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 8**-0.5, -1)
    mass = (dense_probs * ~visible).sum(-1).mean(-1)
    assert torch.allclose(stats.mass_dropped.double(), mass, atol=1e-5)
    assert stats.entries_dropped.min() > 0


def test_svg_resolves_per_head() -> None:
    q, k, v = qkv()
    out, _, kinds = block_sparse_attention(q, k, v, layout=LAYOUT, kind="svg", backend="torch", block=BLOCK)
    expected, _, reference_kinds = structured_attention(q, k, v, layout=LAYOUT, kind="svg")
    assert kinds == reference_kinds and set(kinds) <= {"spatial", "temporal"}
    assert (out - expected).abs().max() < 1e-5


def test_block_mask_is_built_from_indices() -> None:
    keep = torch.zeros(2, 8, 8, dtype=torch.bool)
    keep[0] = torch.eye(8, dtype=torch.bool)
    keep[1, :, :3] = True
    mask = build_block_mask(BlockSelection(keep, None, ["blocks"] * 2, 16), 116)
    assert mask.kv_num_blocks.tolist() == [[[1] * 8, [3] * 8]]
    assert mask.kv_indices[0, 0, :, 0].tolist() == list(range(8))
    assert sorted(mask.kv_indices[0, 1, 0, :3].tolist()) == [0, 1, 2]


# frames of 30 tokens fill blocks of 16 with 2 of padding: these frames are aligned to blocks
ALIGNED = TokenLayout(3, 5, 6, video_start=7, text=(0, 7))


def test_frames_are_aligned_when_padding_is_small() -> None:
    assert frame_alignment_pays(ALIGNED, BLOCK) and not frame_alignment_pays(LAYOUT, BLOCK)
    wan = TokenLayout(5, 30, 52)
    assert frame_alignment_pays(wan, 128) and not frame_alignment_pays(TokenLayout(9, 8, 8), 128)


@pytest.mark.parametrize(
    ("kind", "mass", "layout"),
    [("tiles", None, LAYOUT), ("temporal", None, ALIGNED), ("blocks", 0.6, LAYOUT)],
    ids=["tiles", "temporal-aligned", "blocks"],
)
def test_flex_equals_the_reference_on_cpu(kind, mass, layout) -> None:
    """Compiled FlexAttention (Inductor's CPU code) against the masked reference; the first call of each
    signature compiles, and that is timed apart from running."""
    num = layout.video_stop + 4
    q, k, v = (t[:, :, :num] for t in qkv(dtype=torch.float32))
    args = {"layout": layout, "kind": kind, "block_mass": mass, "scale": 0.4, "block": BLOCK}
    reference, expected, kinds = block_sparse_attention(q, k, v, backend="torch", **args)
    calls = FLEX_TIMINGS.calls
    out, stats, flex_kinds = block_sparse_attention(q, k, v, backend="flex", measure=False, **args)
    assert (out - reference).abs().max() < 1e-5
    assert flex_kinds == kinds
    assert torch.equal(stats.entries_dropped, expected.entries_dropped)
    assert stats.mass_dropped.isnan().all()
    assert FLEX_TIMINGS.calls == calls + 1 and FLEX_TIMINGS.compile_s > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "blocks", "window": (0, 1, 1)}, "no window"), ({"kind": "tiles", "block_mass": 0.5}, "block_mass"),
     ({"kind": "blocks", "block_mass": 0.0}, r"\(0, 1\]"), ({"kind": "nope"}, "unknown block method"),
     ({"kind": "tiles", "backend": "cuda"}, "backend")],
)  # fmt: skip
def test_bad_arguments_raise(kwargs, message) -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match=message):
        block_sparse_attention(q, k, v, layout=LAYOUT, **kwargs)
