"""attention_stats against torch SDPA and a naive whole-map implementation: time and peak memory.

Prints two tables:
1. time as a multiple of SDPA (median of interleaved runs) and peak memory above the inputs,
   for q, k, v float32 (1, H, N, D) with a video layout (frames of 16 x 16 tokens);
2. the error of the estimated top-k mass curve against the exact one on structured inputs.

Usage: python benchmarks/bench_attention_stats.py [--sizes 1024 4096 8192 16384] [--heads 12]
       [--reps 5] [--device cpu|cuda] [--skip-memory] [--skip-error]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from vditscope import TokenLayout, attention_stats
from vditscope.stats.reference import dense_probabilities

VARIANTS = {
    "sdpa": "torch SDPA (output only)",
    "stats": "attention_stats: output + every statistic (top-k auto)",
    "stats_topk_off": "attention_stats: output + statistics, no top-k curve",
    "stats_only": "attention_stats without output (capture's second pass)",
    "naive": "naive: whole softmax(QK^T) per head, then statistics",
}


def layout_for(n: int) -> TokenLayout:
    return TokenLayout(frames=max(1, n // 256), height=16, width=16)


def make_inputs(n: int, heads: int, dim: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(n)
    return tuple(torch.randn(1, heads, n, dim, generator=g).to(device) for _ in range(3))


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Keep each head's whole N x N probability map, derive the same statistics from it."""
    outs = []
    for h in range(q.shape[1]):
        p = torch.softmax((q[0, h] @ k[0, h].T) / math.sqrt(q.shape[-1]), dim=-1)
        outs.append(p @ v[0, h])
        -(p * p.clamp_min(1e-30).log()).sum(-1)  # entropy
        p.sum(0)  # received
        p.view(p.shape[0], layout.frames, -1).sum(-1)  # frame masses
        top = p.topk(math.ceil(0.5 * p.shape[-1]), dim=-1).values.cumsum(-1)  # top-k curve
        del p, top
    return torch.stack(outs)[None]


def run_variant(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> None:
    if name == "sdpa":
        F.scaled_dot_product_attention(q, k, v)
    elif name == "stats":
        attention_stats(q, k, v, layout=layout)
    elif name == "stats_topk_off":
        attention_stats(q, k, v, layout=layout, top_mass="off")
    elif name == "stats_only":
        attention_stats(q, k, v, layout=layout, compute_output=False)
    elif name == "naive":
        naive(q, k, v, layout)
    if q.is_cuda:
        torch.cuda.synchronize()


def time_variants(n: int, heads: int, dim: int, reps: int, device: str, variants: list[str]) -> dict[str, float]:
    q, k, v = make_inputs(n, heads, dim, device)
    layout = layout_for(n)
    for name in variants:  # warm-up
        run_variant(name, q[:, :1], k[:, :1], v[:, :1], layout)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):  # interleaved, so drifting machine load hits every variant alike
        for name in variants:
            start = time.perf_counter()
            run_variant(name, q, k, v, layout)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mb(name: str, n: int, heads: int, dim: int, device: str) -> float:
    """Peak memory above the inputs, in MiB, measured in a fresh process."""
    code = f"""
import torch, json, sys
sys.path.insert(0, {sys.path[0]!r})
from bench_attention_stats import make_inputs, layout_for, run_variant
q, k, v = make_inputs({n}, {heads}, {dim}, {device!r})
if {device!r} == "cuda":
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    run_variant({name!r}, q, k, v, layout_for({n}))
    print(json.dumps((torch.cuda.max_memory_allocated() - base) / 2**20))
else:
    def status(key):
        with open("/proc/self/status") as f:
            return int(f.read().split(key + ":")[1].split()[0]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    base = status("VmRSS")
    run_variant({name!r}, q, k, v, layout_for({n}))
    print(json.dumps((status("VmHWM") - base) / 2**20))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def structured_inputs(frames: int, height: int, width: int, heads: int, dim: int, seed: int) -> tuple:
    """Video-like q, k: positional features (local attention) + content noise + a few sink keys."""
    g = torch.Generator().manual_seed(seed)
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([t.flatten() / 2.0, y.flatten() / 3.0, x.flatten() / 3.0], 1)
    freqs = torch.randn(3, dim // 2, generator=g)
    angles = pos @ freqs
    feats = torch.cat([angles.cos(), angles.sin()], 1)  # (N, dim)
    n = feats.shape[0]
    qs, ks = [], []
    for h in range(heads):
        sharp = 1.0 + 2.0 * h / max(heads - 1, 1)
        qs.append(sharp * feats + 0.7 * torch.randn(n, dim, generator=g))
        kh = feats + 0.7 * torch.randn(n, dim, generator=g)
        sinks = torch.randint(0, n, (3,), generator=g)
        kh[sinks] += 2.5 * qs[-1].mean(0)  # keys that every query likes
        ks.append(kh)
    v = torch.randn(1, heads, n, dim, generator=g)
    return torch.stack(qs)[None], torch.stack(ks)[None], v


def estimate_errors(shapes: list[tuple[int, int, int]], heads: int, dim: int) -> list[dict]:
    rows = []
    for frames, height, width in shapes:
        q, k, v = structured_inputs(frames, height, width, heads, dim, seed=frames * height)
        _, exact = attention_stats(q, k, v, top_mass="exact", compute_output=False)
        _, est = attention_stats(q, k, v, top_mass="estimate", compute_output=False)
        err = (est["topk_mass"] - exact["topk_mass"]).abs()
        rows.append(
            {
                "N": frames * height * width,
                "mean_abs_error": err.mean().item(),
                "max_abs_error": err.max().item(),
                "exact_top10_range": (exact["topk_mass"][..., 2].min().item(), exact["topk_mass"][..., 2].max().item()),
            }
        )
    return rows


def check_exactness(device: str) -> float:
    """Max |out - SDPA| and stats vs float64 dense on a small odd-sized input (sanity, not timing)."""
    q, k, v = make_inputs(777, 2, 64, device)
    out, _ = attention_stats(q, k, v)
    p = dense_probabilities(q.double(), k.double())
    return max(
        (out - F.scaled_dot_product_attention(q, k, v)).abs().max().item(),
        (out.double() - p @ v.double()).abs().max().item(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive-max", type=int, default=16384, help="largest N for the naive variant")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-error", action="store_true")
    args = parser.parse_args()

    print(
        f"# device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"q/k/v float32 (1, {args.heads}, N, {args.dim}), median of {args.reps} interleaved runs"
    )
    print(f"# max |out - SDPA| on a 777-token input: {check_exactness(args.device):.2e}")
    for name, text in VARIANTS.items():
        print(f"#   {name:15s} {text}")
    header = f"{'N':>6} {'sdpa s':>8} " + " ".join(f"{name:>15}" for name in VARIANTS if name != "sdpa")
    print("\n## time (x SDPA)\n" + header)
    for n in args.sizes:
        variants = [name for name in VARIANTS if name != "naive" or n <= args.naive_max]
        reps = args.reps if n <= 8192 else max(2, args.reps // 2)
        med = time_variants(n, args.heads, args.dim, reps, args.device, variants)
        cells = " ".join(
            f"{med[name] / med['sdpa']:>15.2f}" if name in med else f"{'-':>15}" for name in VARIANTS if name != "sdpa"
        )
        print(f"{n:>6} {med['sdpa']:>8.3f} {cells}", flush=True)
    if not args.skip_memory:
        print(
            "\n## peak memory above the inputs (MiB)\n"
            + f"{'N':>6} {'heads':>5} "
            + " ".join(f"{name:>15}" for name in VARIANTS)
        )
        for n, heads in [(n, args.heads) for n in args.sizes] + [(32768, 1)]:
            cells = []
            for name in VARIANTS:
                too_big = name == "naive" and n > args.naive_max
                cells.append(
                    f"{'-':>15}" if too_big else f"{peak_memory_mb(name, n, heads, args.dim, args.device):>15.0f}"
                )
            print(f"{n:>6} {heads:>5} " + " ".join(cells), flush=True)
    if not args.skip_error:
        print("\n## top-k mass: estimate vs exact (structured video-like inputs, 4 heads)")
        print(json.dumps(estimate_errors([(16, 16, 16), (32, 16, 16), (21, 15, 26)], heads=4, dim=64), indent=1))


if __name__ == "__main__":
    main()
