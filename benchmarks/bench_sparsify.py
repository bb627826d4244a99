"""sparse_attention against torch SDPA: time as a multiple of SDPA (median of interleaved runs).

Variants: plain SDPA; sparse_attention dense (bottom_k = 0, the floor of the chunked path);
bottom_k = 0.1, 0.5, 0.9; top_p = 0.9. Inputs q, k, v float32 (1, H, N, D), random.
The issue's target for bottom-k on CPU is <= 2.2x SDPA at N = 4096 and 8192.

Usage: python benchmarks/bench_sparsify.py [--sizes 4096 8192] [--repeats 5] [--heads 12] [--dim 128]
       [--device cpu|cuda] [--chunk-size C] [--variants dense bottom_k=0.5 ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vditscope.stats.sparsify import sparse_attention

VARIANTS: dict[str, dict] = {
    "dense": {},
    "bottom_k=0.1": {"bottom_k": 0.1},
    "bottom_k=0.5": {"bottom_k": 0.5},
    "bottom_k=0.9": {"bottom_k": 0.9},
    "top_p=0.9": {"top_p": 0.9},
}


def make_inputs(n: int, heads: int, dim: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(n)
    return tuple(torch.randn(1, heads, n, dim, generator=g).to(device) for _ in range(3))


def runner(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int | None) -> Callable[[], None]:
    """A call of one variant (synchronized on a GPU)."""

    def call() -> None:
        if name == "sdpa":
            F.scaled_dot_product_attention(q, k, v)
        else:
            sparse_attention(q, k, v, chunk_size=chunk, **VARIANTS[name])
        if q.is_cuda:
            torch.cuda.synchronize()

    return call


def time_variants(
    n: int, heads: int, dim: int, repeats: int, device: str, chunk: int | None, variants: list[str]
) -> dict[str, float]:
    q, k, v = make_inputs(n, heads, dim, device)
    names = ["sdpa", *variants]
    for name in names:  # warm-up on one head
        runner(name, q[:, :1], k[:, :1], v[:, :1], chunk)()
    calls = {name: runner(name, q, k, v, chunk) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):  # interleaved, so drifting machine load hits every variant alike
        for name in names:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def check_exactness(device: str) -> float:
    """Max |out - SDPA| of the dense path on a small odd-sized input (sanity, not timing)."""
    q, k, v = make_inputs(777, 2, 64, device)
    out, _ = sparse_attention(q, k, v, temperature=0.7)
    expected = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(64) / 0.7)
    return (out - expected).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="query rows per chunk (default: automatic)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()

    print(
        f"# device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"q/k/v float32 (1, {args.heads}, N, {args.dim}), median of {args.repeats} interleaved runs"
    )
    print(f"# max |out - SDPA| of the dense path on a 777-token input: {check_exactness(args.device):.2e}")
    header = f"{'N':>6} {'sdpa s':>8} " + " ".join(f"{name:>13}" for name in args.variants)
    print(f"\n## time (x SDPA), chunk size {args.chunk_size or 'automatic'}\n" + header)
    for n in args.sizes:
        med = time_variants(n, args.heads, args.dim, args.repeats, args.device, args.chunk_size, args.variants)
        cells = " ".join(f"{med[name] / med['sdpa']:>13.2f}" for name in args.variants)
        print(f"{n:>6} {med['sdpa']:>8.3f} {cells}", flush=True)


if __name__ == "__main__":
    main()
