"""Tests of ``vditscope.stats.sparsify.sparse_attention``: the kept keys of every row against a
reference that computes the scores with the same float32 rounding (same chunked product, same
scaling, same masking) and applies the documented rule by sorting in float64; outputs against torch
SDPA (dense case) and a float64 dense reference (rows without a tie near the cut-off); the tie rule
on constructed duplicate scores; grouped-query heads, cross-attention, half precision, the threaded
and sorted-fallback paths, and argument validation.

Inputs are small and of odd sizes; chunk sizes never divide the number of queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from vditscope.stats import sparsify, streaming
from vditscope.stats.sparsify import SparsityStats, score_factor, sparse_attention
from vditscope.stats.streaming import LOG2E, MASKED, prepare_mask

from .qkv import random_qkv, sdpa64

FLOOR_TOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_thread")


def make_mask(kind: str, batch: int, heads: int, num_q: int, num_k: int) -> torch.Tensor | None:
    """A mask of one kind; every query keeps at least two visible keys."""
    gen = torch.Generator().manual_seed(7)
    if kind == "none":
        return None
    if kind == "key_padding":
        mask = torch.ones(batch, 1, 1, num_k, dtype=torch.bool)
        for b in range(batch):
            mask[b, ..., num_k - 5 - 6 * b :] = False
        return mask
    if kind == "bool_full":
        mask = torch.rand(batch, heads, num_q, num_k, generator=gen) < 0.6
        mask[..., :2] = True
        return mask
    if kind == "additive":
        mask = torch.randn(batch, 1, num_q, num_k, generator=gen)
        mask = mask.masked_fill(torch.rand(batch, 1, num_q, num_k, generator=gen) < 0.3, float("-inf"))
        mask[..., :2] = 0.0
        return mask
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------------
# references


def rule_cut(
    scores: torch.Tensor, visible: torch.Tensor, weights: torch.Tensor, bottom_k: float, top_p: float | None
) -> torch.Tensor:
    """Each row's cut-off by the documented rule, found by sorting in float64 (-inf: keep all).

    ``scores`` (..., Nk); ``weights`` the dense weights of the visible keys (top-p only)."""
    values, order = scores.to(torch.float64).sort(dim=-1)
    n = visible.sum(-1)
    hidden = scores.shape[-1] - n
    if top_p is None:
        m = torch.minimum(torch.floor(bottom_k * n.to(torch.float64) + FLOOR_TOL).long(), (n - 1).clamp(min=0))
        cut = values.gather(-1, (hidden + m).clamp(max=scores.shape[-1] - 1)[..., None]).squeeze(-1)
        return torch.where(m > 0, cut, -math.inf)
    w = weights.to(torch.float64).gather(-1, order)
    budget = (1.0 - top_p) * weights.sum(-1, dtype=torch.float64)
    before = torch.cat([torch.zeros_like(w[..., :1]), w.cumsum(-1)[..., :-1]], dim=-1)
    last = (before <= budget[..., None]).sum(-1) - 1
    cut = values.gather(-1, last[..., None]).squeeze(-1)
    return torch.where(n > 0, cut, -math.inf)


@dataclass(frozen=True)
class Rule:
    """The arguments of ``sparse_attention`` that decide which keys a row keeps, as the references take them."""

    bottom_k: float = 0.0
    top_p: float | None = None
    temperature: float = 1.0
    attn_mask: torch.Tensor | None = None


def same_rounding_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk_size: int, scale: float | None = None, **rule_args: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Output (float64), statistics and kept entries from scores rounded exactly like the kernel's;
    ``rule_args``: the fields of :class:`Rule`."""
    rule = Rule(**rule_args)
    batch, q_heads, num_q, dim = q.shape
    kv_heads, num_k = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    factor = score_factor(scale, rule.temperature)
    mask = prepare_mask(rule.attn_mask, batch, q_heads, num_q, num_k)
    out = torch.zeros(batch, q_heads, num_q, v.shape[-1], dtype=torch.float64)
    keep_all = torch.zeros(batch, q_heads, num_q, num_k, dtype=torch.bool)
    mass = torch.zeros(batch, q_heads, dtype=torch.float64)
    dropped = torch.zeros(batch, q_heads, dtype=torch.float64)
    visible_total = torch.zeros(batch, q_heads, dtype=torch.float64)
    for b in range(batch):
        for h in range(q_heads):
            keys_t = k[b, h // group].to(torch.float32).t().contiguous()
            values = v[b, h // group].to(torch.float64)
            queries = q[b, h].to(torch.float32) * factor
            rows_valid = 0
            for r0 in range(0, num_q, chunk_size):
                r1 = min(num_q, r0 + chunk_size)
                s = torch.mm(queries[r0:r1], keys_t)
                if mask is not None:
                    part = mask[b, h, r0:r1]
                    if part.dtype == torch.bool:
                        s.masked_fill_(~part, MASKED)
                    else:
                        s.add_(part).clamp_(min=MASKED)
                visible = s > MASKED / 2
                row_max = s.amax(1).masked_fill(~visible.any(1), 0.0)
                weights = torch.exp2(s - row_max[:, None])
                keep = s.to(torch.float64) >= rule_cut(s, visible, weights, rule.bottom_k, rule.top_p)[:, None]
                keep_all[b, h, r0:r1] = keep
                p = torch.exp2(s.to(torch.float64) - row_max[:, None].to(torch.float64)) * visible
                dense = p.sum(1)
                kept = p * keep
                out[b, h, r0:r1] = (kept @ values) / kept.sum(1, keepdim=True).clamp(min=1e-300)
                valid = dense > 0
                rows_valid += int(valid.sum())
                mass[b, h] += ((p * ~keep).sum(1)[valid] / dense[valid]).sum()
                dropped[b, h] += (visible & ~keep).sum()
                visible_total[b, h] += visible.sum()
            mass[b, h] /= max(rows_valid, 1)
    stats = {"mass_dropped": mass, "entries_dropped": dropped / visible_total.clamp(min=1)}
    return out, stats, keep_all


def float64_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **rule_args: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 output by the same rule on float64 scores, and which rows have a clear cut-off (no
    other score, or for top-p no cumulative mass, within a margin of the cut-off); ``rule_args``: the
    fields of :class:`Rule`."""
    rule = Rule(**rule_args)
    attn_mask, top_p = rule.attn_mask, rule.top_p
    group = q.shape[1] // k.shape[1]
    k64 = k.to(torch.float64).repeat_interleave(group, dim=1)
    v64 = v.to(torch.float64).repeat_interleave(group, dim=1)
    logits = q.to(torch.float64) @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1]) / rule.temperature
    visible = torch.ones_like(logits, dtype=torch.bool)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            visible = visible & attn_mask
        else:
            logits = logits + attn_mask.to(torch.float64)
            visible = visible & (attn_mask > -1e4)
    logits = logits.masked_fill(~visible, -math.inf)
    p = torch.softmax(logits, dim=-1)
    cut = rule_cut(logits, visible, p, rule.bottom_k, top_p)
    keep = logits >= cut[..., None]
    # the cut-off is clear when no other score is within 1e-4 of it and, for top-p, no cumulative
    # mass of the sorted weights is within 1e-5 of the budget
    gaps = (logits - cut[..., None]).abs().masked_fill(logits == cut[..., None], math.inf)
    clear = gaps.amin(-1) > 1e-4
    if top_p is not None and top_p < 1.0:
        order = logits.argsort(dim=-1)
        cum = p.gather(-1, order).cumsum(-1)
        clear &= ((cum - (1.0 - top_p)).abs() > 1e-5).all(-1)
    kept = p * keep
    return (kept @ v64) / kept.sum(-1, keepdim=True), clear


def check_against_reference(q, k, v, *, chunk_size, **kwargs) -> tuple[torch.Tensor, SparsityStats, dict]:
    out, stats = sparse_attention(q, k, v, chunk_size=chunk_size, **kwargs)
    ref_out, ref_stats, _ = same_rounding_reference(q, k, v, chunk_size=chunk_size, **kwargs)
    assert out.dtype == q.dtype and out.shape == ref_out.shape
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[q.dtype]  # rounding of the output
    torch.testing.assert_close(out.to(torch.float64), ref_out, atol=tol, rtol=tol)
    for name in ("mass_dropped", "entries_dropped"):
        value = stats[name]
        assert value.dtype == torch.float32 and value.shape == q.shape[:2]
        torch.testing.assert_close(value.to(torch.float64), ref_stats[name], atol=1e-6, rtol=0, msg=name)
    return out, stats, ref_stats


# ----------------------------------------------------------------------------------------------
# dense: torch SDPA


@pytest.mark.parametrize("mask_kind", ["none", "key_padding", "bool_full", "additive"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [13, None])
def test_dense_equals_sdpa_with_temperature(mask_kind, temperature, chunk_size):
    q, k, v = random_qkv(131)
    mask = make_mask(mask_kind, 2, 3, 131, 131)
    out, stats = sparse_attention(q, k, v, temperature=temperature, attn_mask=mask, chunk_size=chunk_size)
    expected = sdpa64(q, k, v, attn_mask=mask, scale=1 / math.sqrt(24) / temperature)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(stats, SparsityStats)
    assert (stats.mass_dropped == 0).all() and (stats.entries_dropped == 0).all()


# ----------------------------------------------------------------------------------------------
# sparse: the same-rounding reference (exact kept sets) and the float64 one


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("bottom_k", [0.1, 0.5, 0.9])
@pytest.mark.parametrize(("num", "chunk_size"), [(77, 10), (131, 64), (300, 97)])
def test_bottom_k_matches_references(num, chunk_size, bottom_k, temperature):
    q, k, v = random_qkv(num, seed=num)
    out, stats, _ = check_against_reference(q, k, v, chunk_size=chunk_size, bottom_k=bottom_k, temperature=temperature)
    # no ties in random float scores: exactly floor(k * n) of n keys dropped in every row
    expected = math.floor(bottom_k * num + FLOOR_TOL) / num
    torch.testing.assert_close(stats.entries_dropped, torch.full((2, 3), expected), atol=1e-7, rtol=0)
    ref64, clear = float64_reference(q, k, v, bottom_k=bottom_k, temperature=temperature)
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(out.double()[clear], ref64[clear], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
@pytest.mark.parametrize(("num", "chunk_size"), [(77, 10), (131, 64), (300, 97)])
def test_top_p_matches_references(num, chunk_size, top_p, temperature):
    q, k, v = random_qkv(num, seed=num + 1)
    out, stats, _ = check_against_reference(q, k, v, chunk_size=chunk_size, top_p=top_p, temperature=temperature)
    assert (stats.mass_dropped <= 1.0 - top_p + 1e-6).all()
    if top_p == 1.0:
        assert (stats.entries_dropped == 0).all()
    ref64, clear = float64_reference(q, k, v, top_p=top_p, temperature=temperature)
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(out.double()[clear], ref64[clear], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", ["key_padding", "bool_full", "additive"])
@pytest.mark.parametrize("mode", [{"bottom_k": 0.5}, {"bottom_k": 0.9, "temperature": 0.5}, {"top_p": 0.9}])
def test_masks_match_reference(mask_kind, mode):
    q, k, v = random_qkv(131, seed=3)
    mask = make_mask(mask_kind, 2, 3, 131, 131)
    _, stats, _ = check_against_reference(q, k, v, chunk_size=29, attn_mask=mask, **mode)
    if mask_kind == "key_padding" and "bottom_k" in mode:
        for b in range(2):  # n visible keys per row, floor(k * n) of them dropped
            n = 131 - 5 - 6 * b
            expected = math.floor(mode["bottom_k"] * n + FLOOR_TOL) / n
            torch.testing.assert_close(stats.entries_dropped[b], torch.full((3,), expected), atol=1e-7, rtol=0)


@pytest.mark.parametrize("mode", [{"bottom_k": 0.5}, {"top_p": 0.9}])
def test_grouped_query_heads_and_cross_attention_match_reference(mode):
    q, k, v = random_qkv(77, 131, q_heads=6, kv_heads=2, seed=5)
    check_against_reference(q, k, v, chunk_size=31, **mode)
    q, k, v = random_qkv(131, 77, q_heads=3, kv_heads=1, seed=6)
    check_against_reference(q, k, v, chunk_size=50, temperature=2.0, **mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    q, k, v = random_qkv(131, seed=8, dtype=dtype)
    check_against_reference(q, k, v, chunk_size=40, bottom_k=0.5)
    check_against_reference(q, k, v, chunk_size=40, top_p=0.9, temperature=0.5)


def test_custom_scale():
    q, k, v = random_qkv(77, seed=9)
    check_against_reference(q, k, v, chunk_size=20, bottom_k=0.3, scale=0.05)


# ----------------------------------------------------------------------------------------------
# ties


def test_tie_rule_on_a_handmade_row():
    """Scores exactly [0, 1, 1, 1, 2, 3] (one query, D = 1): m = 3 for bottom_k = 0.5, the 4th smallest
    score is 1, so only the 0 is dropped; for bottom_k = 0.2, m = 1 and the 2nd smallest is 1: same."""
    scale = 1.0 / LOG2E  # scores in log2 units are then the plain dot products (exact small integers)
    keys = torch.tensor([0.0, 1, 1, 1, 2, 3]).view(1, 1, 6, 1)
    values = torch.eye(6).view(1, 1, 6, 6)
    query = torch.ones(1, 1, 1, 1)
    weights = torch.exp2(keys.view(6) - 3)
    for bottom_k in (0.2, 0.5):
        out, stats = sparse_attention(query, keys, values, scale=scale, bottom_k=bottom_k)
        expected = weights.clone()
        expected[0] = 0
        torch.testing.assert_close(out.view(6), expected / expected.sum())
        assert stats.entries_dropped.item() == pytest.approx(1 / 6)
        assert stats.mass_dropped.item() == pytest.approx((weights[0] / weights.sum()).item())
    # bottom_k = 0.7: m = 4, the 5th smallest is 2: the 0 and all three 1s are dropped
    out, stats = sparse_attention(query, keys, values, scale=scale, bottom_k=0.7)
    assert stats.entries_dropped.item() == pytest.approx(4 / 6)
    assert (out.view(6)[:4] == 0).all() and (out.view(6)[4:] > 0).all()
    # top_p: weights 1/8, 1/4 x 3, 1/2, 1 (sum 2.375); keeping 1 and 1/2 holds 0.632 < 0.7, so the
    # cut-off is the score 1, and all three tied keys are kept: only the 0 is dropped
    out, stats = sparse_attention(query, keys, values, scale=scale, top_p=0.7)
    assert stats.entries_dropped.item() == pytest.approx(1 / 6)
    assert out.view(6)[0] == 0 and (out.view(6)[1:] > 0).all()


@pytest.mark.parametrize(
    "mode", [{"bottom_k": 0.1}, {"bottom_k": 0.5}, {"bottom_k": 0.9}, {"top_p": 0.5}, {"top_p": 0.9}]
)
def test_many_exact_ties_follow_the_rule(mode):
    """Small-integer q and k, scores exact half-integers: many ties at every cut-off."""
    gen = torch.Generator().manual_seed(11)
    q = torch.randint(-2, 3, (2, 3, 131, 24), generator=gen).float()
    k = torch.randint(-1, 2, (2, 3, 131, 24), generator=gen).float()
    v = torch.randn(2, 3, 131, 24, generator=gen)
    scale = 0.5 / LOG2E  # the factor folded into the queries is 0.5 in float32
    assert torch.tensor(score_factor(scale, 1.0), dtype=torch.float32).item() == 0.5
    _, stats, _ = check_against_reference(q, k, v, chunk_size=37, scale=scale, **mode)
    if "bottom_k" in mode:
        m = math.floor(mode["bottom_k"] * 131 + FLOOR_TOL)
        assert (stats.entries_dropped <= m / 131 + 1e-7).all()
        assert (stats.entries_dropped < m / 131 - 1e-3).any()  # ties at the cut-off were kept


@pytest.mark.parametrize("mode", [{"bottom_k": 0.5}, {"bottom_k": 0.9}, {"top_p": 0.5}])
def test_rows_of_equal_scores_keep_every_key(mode):
    """Identical keys: every visible score ties with the cut-off, so nothing is dropped."""
    q, _, v = random_qkv(41, seed=16)
    k = torch.ones(2, 3, 41, 24)
    mask = make_mask("key_padding", 2, 3, 41, 41)
    out, stats = sparse_attention(q, k, v, attn_mask=mask, chunk_size=16, **mode)
    assert (stats.entries_dropped == 0).all() and (stats.mass_dropped == 0).all()
    expected = torch.stack([v[b, :, : 41 - 5 - 6 * b].mean(-2) for b in range(2)])[:, :, None].expand_as(out)
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------------------------
# paths: sorted fallback, compaction, threads, empty rows, chunk size


@pytest.mark.parametrize("rounds", [0, 1, 3])
@pytest.mark.parametrize("mode", [{"bottom_k": 0.5}, {"top_p": 0.9}])
def test_sorted_fallback_gives_the_same_result(monkeypatch, rounds, mode):
    q, k, v = random_qkv(131, seed=12)
    mask = make_mask("key_padding", 2, 3, 131, 131)
    out, stats = sparse_attention(q, k, v, chunk_size=50, attn_mask=mask, **mode)
    monkeypatch.setattr(sparsify, "MAX_ROUNDS", rounds)
    out_sorted, stats_sorted = sparse_attention(q, k, v, chunk_size=50, attn_mask=mask, **mode)
    torch.testing.assert_close(out_sorted, out, atol=1e-6, rtol=1e-6)
    for name in stats:
        torch.testing.assert_close(stats_sorted[name], stats[name], atol=1e-7, rtol=0)


def test_threaded_heads_match_single_thread(monkeypatch):
    q, k, v = random_qkv(131, q_heads=4, kv_heads=2, seed=13)
    out, stats = sparse_attention(q, k, v, chunk_size=40, bottom_k=0.5)
    monkeypatch.setattr(streaming, "THREADED_MIN_SCORES", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    out_threaded, stats_threaded = sparse_attention(q, k, v, chunk_size=40, bottom_k=0.5)
    monkeypatch.undo()
    torch.testing.assert_close(out_threaded, out, atol=1e-6, rtol=1e-6)
    for name in stats:
        torch.testing.assert_close(stats_threaded[name], stats[name], atol=1e-7, rtol=0)


@pytest.mark.parametrize("mode", [{"bottom_k": 0.5}, {"top_p": 0.9}, {}])
def test_fully_masked_rows_give_zeros_and_finite_stats(mode):
    q, k, v = random_qkv(40, seed=14)
    mask = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[:, :, 5] = False  # query 5 sees nothing
    out, stats = sparse_attention(q, k, v, attn_mask=mask, chunk_size=9, **mode)
    assert (out[:, :, 5] == 0).all() and torch.isfinite(out).all()
    assert torch.isfinite(stats.mass_dropped).all() and torch.isfinite(stats.entries_dropped).all()
    check_against_reference(q, k, v, attn_mask=mask, chunk_size=9, **mode)


def test_default_chunk_keeps_the_score_buffer_small():
    for num_k in (77, 4096, 8192, 32768, 120_000):
        rows = sparsify.sparse_chunk_size(num_k)
        assert 64 <= rows <= 1024
        assert rows * num_k <= max(64 * num_k, sparsify.SPARSE_CHUNK_ELEMENTS)


def test_stats_attribute_access_and_shapes():
    q, k, v = random_qkv(20, seed=15)
    _, stats = sparse_attention(q, k, v, bottom_k=0.5)
    assert set(stats) == {"mass_dropped", "entries_dropped"}
    assert stats.mass_dropped is stats["mass_dropped"] and stats.mass_dropped.shape == (2, 3)
    with pytest.raises(AttributeError):
        _ = stats.missing


# ----------------------------------------------------------------------------------------------
# validation


def _bad_calls():
    q = torch.randn(1, 2, 10, 8)
    return {
        "bottom_k negative": lambda: sparse_attention(q, q, q, bottom_k=-0.1),
        "bottom_k one": lambda: sparse_attention(q, q, q, bottom_k=1.0),
        "bottom_k nan": lambda: sparse_attention(q, q, q, bottom_k=float("nan")),
        "top_p zero": lambda: sparse_attention(q, q, q, top_p=0.0),
        "top_p above one": lambda: sparse_attention(q, q, q, top_p=1.1),
        "top_p nan": lambda: sparse_attention(q, q, q, top_p=float("nan")),
        "temperature zero": lambda: sparse_attention(q, q, q, temperature=0.0),
        "temperature negative": lambda: sparse_attention(q, q, q, temperature=-1.0),
        "temperature inf": lambda: sparse_attention(q, q, q, temperature=float("inf")),
        "both active": lambda: sparse_attention(q, q, q, bottom_k=0.5, top_p=0.9),
        "chunk size zero": lambda: sparse_attention(q, q, q, chunk_size=0),
        "heads not a multiple": lambda: sparse_attention(torch.randn(1, 3, 10, 8), q, q),
        "mask does not broadcast": lambda: sparse_attention(
            q, q, q, attn_mask=torch.ones(1, 1, 1, 9, dtype=torch.bool)
        ),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_arguments_raise_value_error(case):
    with pytest.raises(ValueError):
        _bad_calls()[case]()
