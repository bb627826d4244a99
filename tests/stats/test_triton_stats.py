"""Tests of the Triton statistics kernels (``backend="triton"``), run on CPU through Triton's interpreter.

Same references and tolerances as the torch path's tests (test_attention_stats.py): the float64 dense
reference, torch SDPA in float64, and the torch path itself for the sampled top-k estimate. Sizes are
small and odd (the interpreter's blocks are 32 x 32, so every input ends in a partial block).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vditscope import TokenLayout, attention_stats
from vditscope.stats.reference import dense_attention_stats

from .qkv import sdpa64
from .test_attention_stats import (
    LAYOUTS,
    assert_close,
    assert_same_stats,
    assert_stats_match_reference,
    make_mask,
    make_qkv,
)

pytestmark = pytest.mark.usefixtures("triton_interpreter", "one_thread", "seeded")


def triton_stats(q, k, v, **kwargs):
    """``attention_stats`` through the Triton kernels; checks the backend it reports."""
    out, stats = attention_stats(q, k, v, backend="triton", **kwargs)
    assert stats.backend == "triton" and stats.lse_source == "triton"
    return out, stats


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_matches_dense_reference_and_sdpa(layout_name):
    """Text before / after the video, video only, other tokens beside both, no layout; tiles and spatial on."""
    n, layout = LAYOUTS[layout_name]
    q, k, v = make_qkv(2, 3, n, 24, seed=7)
    tiles = 11 if layout is not None else None
    out, stats = triton_stats(q, k, v, layout=layout, map_tiles=tiles)
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout, map_tiles=tiles)
    assert out.dtype == torch.float32
    assert_close(out, ref_out, name="out")
    assert_close(out, sdpa64(q, k, v), name="out vs sdpa")
    assert_stats_match_reference(stats, ref)
    assert stats.top_mass_method == "exact"
    assert list(stats)[:3] == ["entropy", "received", "topk_mass"]


@pytest.mark.parametrize(
    "mask_kind", ["bool_key_padding", "float_key_padding_inf", "bool_full", "float_full_inf", "float_2d", "causal"]
)
def test_masks_match_dense_reference(mask_kind):
    n, layout = LAYOUTS["text_after_video"]
    q, k, v = make_qkv(2, 2, n, 16, seed=12)
    mask, causal = make_mask(mask_kind, 2, 2, n, n)
    out, stats = triton_stats(q, k, v, layout=layout, attn_mask=mask, is_causal=causal, map_tiles=4)
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask, is_causal=causal, map_tiles=4)
    assert_close(out, ref_out, name="out")
    assert_close(out, sdpa64(q, k, v, attn_mask=mask, is_causal=causal), name="out vs sdpa")
    assert_stats_match_reference(stats, ref)


@pytest.mark.parametrize("mask_kind", ["none", "bool_key_padding", "causal"])
def test_grouped_query_heads_match_reference(mask_kind):
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 4, n, 16, kv_heads=2, dim_v=11, seed=13)
    mask, causal = make_mask(mask_kind, 2, 4, n, n)
    out, stats = triton_stats(q, k, v, layout=layout, attn_mask=mask, is_causal=causal)
    _, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask, is_causal=causal)
    assert out.shape == (2, 4, n, 11)
    assert_close(out, sdpa64(q, k, v, attn_mask=mask, is_causal=causal), name="out")
    assert_stats_match_reference(stats, ref)


@pytest.mark.parametrize(
    ("num_q", "num_k", "mask_kind"), [(19, 41, "float_full_inf"), (41, 70, "causal"), (70, 5, "none")]
)
def test_cross_attention_and_custom_scale(num_q, num_k, mask_kind):
    q, k, v = make_qkv(2, 2, num_q, 12, num_k=num_k, dim_v=9, seed=5)
    mask, causal = make_mask(mask_kind, 2, 2, num_q, num_k)
    out, stats = triton_stats(q, k, v, attn_mask=mask, is_causal=causal, scale=0.3)
    _, ref = dense_attention_stats(q, k, v, attn_mask=mask, is_causal=causal, scale=0.3)
    assert_close(out, sdpa64(q, k, v, attn_mask=mask, is_causal=causal, scale=0.3), name="out")
    assert_stats_match_reference(stats, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 24, dtype=dtype, seed=14)
    mask, _ = make_mask("bool_key_padding", 2, 2, n, n)
    out, stats = triton_stats(q, k, v, layout=layout, attn_mask=mask, map_tiles=11)
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask, map_tiles=11)
    assert out.dtype == dtype
    rtol = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert_close(out, ref_out, atol=2e-3, rtol=rtol, name="out")
    assert_stats_match_reference(stats, ref, atol=1e-4, rtol=1e-4)


def test_compute_output_spatial_and_top_mass_switches():
    """compute_output=False gives None, spatial=False drops the spatial keys, top_mass="off" the top-k;
    every other statistic is unchanged, and the torch path agrees."""
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 24, seed=15)
    mask, _ = make_mask("float_key_padding_inf", 2, 2, n, n)
    out, full = triton_stats(q, k, v, layout=layout, attn_mask=mask)
    none, lean = triton_stats(
        q, k, v, layout=layout, attn_mask=mask, compute_output=False, spatial=False, top_mass="off"
    )
    assert out is not None and none is None
    assert set(full) - set(lean) == {"spatial_offsets", "locality_space", "topk_mass"}
    assert lean.top_mass_method == "off"
    assert_same_stats(lean, full, lean)
    out_torch, torch_stats = attention_stats(q, k, v, layout=layout, attn_mask=mask, backend="torch")
    assert torch_stats.backend == "torch"
    assert_close(out, out_torch, name="out vs torch path")
    assert_same_stats(full, torch_stats, torch_stats, tol=1e-5)


@pytest.mark.parametrize("mask_kind", ["none", "bool_key_padding"])
def test_top_mass_estimate_equals_torch_path_estimate(mask_kind):
    """300 queries: "estimate" measures 128 sampled rows; the same rows and control variates as the torch
    path, so the estimates agree closely, and both are near the exact value."""
    q, k, v = make_qkv(1, 2, 300, 16, seed=31)
    mask, _ = make_mask(mask_kind, 1, 2, 300, 300)
    _, est = triton_stats(q, k, v, attn_mask=mask, top_mass="estimate", compute_output=False, chunk_size=64)
    _, torch_est = attention_stats(q, k, v, attn_mask=mask, top_mass="estimate", compute_output=False, backend="torch")
    _, exact = triton_stats(q, k, v, attn_mask=mask, top_mass="exact", compute_output=False)
    _, ref = dense_attention_stats(q, k, v, attn_mask=mask)
    assert est.top_mass_method == torch_est.top_mass_method == "estimate"
    assert_close(est.topk_mass, torch_est.topk_mass, atol=1e-5, rtol=1e-5, name="estimate vs torch estimate")
    assert_close(exact.topk_mass, ref["topk_mass"], name="exact topk_mass")
    assert (est.topk_mass - exact.topk_mass).abs().max() < 0.01


def test_fully_masked_rows_give_finite_stats():
    """Rows with no visible key: entropy 0, excluded from the top-k means; SDPA gives them output 0."""
    n, layout = LAYOUTS["text_before_video"]
    q, k, v = make_qkv(2, 2, n, 16, seed=19)
    mask = torch.ones(2, 2, n, n, dtype=torch.bool)
    mask[0, :, 3:5] = False
    mask[1, 1, :40] = False  # a whole 32-row block and part of the next
    out, stats = triton_stats(q, k, v, layout=layout, attn_mask=mask)
    _, ref = dense_attention_stats(q, k, v, layout=layout, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert_close(out, sdpa64(q, k, v, attn_mask=mask), name="out")
    assert_stats_match_reference(stats, ref)
    assert torch.equal(stats.entropy[0, :, 3:5], torch.zeros(2, 2))


def test_cpu_without_interpreter_raises(monkeypatch):
    q, k, v = make_qkv(1, 1, 8, 8, seed=1)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        attention_stats(q, k, v, backend="triton")
    _, stats = attention_stats(q, k, v)  # "auto" on CPU is the torch path
    assert stats.backend == "torch"
    with pytest.raises(ValueError, match="backend"):
        attention_stats(q, k, v, backend="cuda")


INTERPRET_LATE = textwrap.dedent(
    """
    import os, torch, triton  # triton imported (and a kernel module loaded) before the variable is set
    from vditscope.stats import triton_kernels, triton_stats
    os.environ["TRITON_INTERPRET"] = "1"
    from vditscope import attention_stats
    q, k, v = (torch.randn(1, 1, 40, 8) for _ in range(3))
    out, stats = attention_stats(q, k, v, backend="triton")
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    print(stats.backend, float((out - ref).abs().max()))
    """
)


def test_interpreter_variable_set_after_triton_import():
    """Kernels are wrapped per call, so TRITON_INTERPRET set after ``import triton`` still takes effect."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", INTERPRET_LATE], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    backend, error = result.stdout.split()
    assert backend == "triton" and float(error) < 1e-5


def test_spatial_layout_with_tall_grid_and_many_tiles():
    """A grid whose frame (4 x 9 = 36 tokens) straddles the 32-token blocks, more tiles than fit a block."""
    layout = TokenLayout(3, 4, 9, video_start=5, text=(0, 5))
    n = 5 + layout.num_video
    q, k, v = make_qkv(1, 2, n, 8, seed=41)
    _, stats = triton_stats(q, k, v, layout=layout, map_tiles=40, compute_output=False)
    _, ref = dense_attention_stats(q, k, v, layout=layout, map_tiles=40)
    assert_stats_match_reference(stats, ref)


COMPILE_SM90 = textwrap.dedent(
    """
    import inspect
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    from vditscope.stats import triton_kernels as K, triton_stats as ts

    def compile_(fn, pointers, constexprs, warps):
        names = inspect.signature(fn).parameters
        scalar = {n: "fp32" if n == "qk_scale" else "i32" for n in names}
        sig = {n: "constexpr" if n in constexprs else pointers.get(n, scalar[n]) for n in names}
        src = ASTSource(JITFunction(fn), sig, constexprs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
        assert kernel.asm["cubin"]

    common = dict(MASK_ROW_BCAST=True, IS_CAUSAL=True, UPCAST=False, QK_PRECISION="tf32", BLOCK_M=ts.GPU_BLOCKS[0],
                  BLOCK_N=ts.GPU_BLOCKS[1], BLOCK_D=128)
    compile_(K.lse_kernel, {"Q": "*bf16", "K": "*bf16", "MASK": "*u8", "LSE": "*fp32", "RMAX": "*fp32", "VIS": "*i32"},
             dict(common, MASK_KIND=1), ts.GPU_WARPS[0])
    sums = ["LSE", "ENT", "RMAX", "RECV", "FRAME", "TILE", "TEXT", "TEXT_RECV", "POS", "SPACE"]
    pointers = dict.fromkeys(sums, "*fp32")
    pointers.update(Q="*bf16", K="*bf16", V="*bf16", OUT="*bf16", MASK="*fp32")
    compile_(K.stats_kernel, pointers, dict(common, MASK_KIND=2, STAT_PRECISION="tf32x3", SPLIT_DOT=1, WANT_MAX=True,
             WANT_OUT=True, LAYOUT=True, HAS_TEXT=True, SPATIAL=True, TILES=True, BLOCK_DV=128, BLOCK_C=64),
             ts.GPU_WARPS[1])
    print("compiled")
    """
)


def test_kernels_compile_for_cuda_sm90():
    """No GPU here: compile both kernels to a Hopper cubin (Triton's bundled ptxas) so the compiled path is
    checked for what the interpreter tolerates and the compiler does not (types, constexprs, loop carries)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-c", COMPILE_SM90], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0 and ("ptxas" in result.stderr and "not found" in result.stderr):
        pytest.skip("no ptxas to finish the compilation")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled" in result.stdout
