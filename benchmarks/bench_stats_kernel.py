"""The Triton statistics kernels against FlashAttention's forward and the torch path, on CUDA.

Prints one table: for bf16 q, k, v (1, H, N, D) with a Wan-like layout (frames x 30 x 52 video tokens after
512 text tokens), the median time of
  flash      F.scaled_dot_product_attention under SDPBackend.FLASH_ATTENTION (output only)
  stats      the statistics pass alone (pass 2, given the log-sum-exp; output not computed)
  triton     attention_stats(backend="triton"): output + every statistic (top-k "auto")
  torch      attention_stats(backend="torch"): the same, chunked torch path
and their ratios to flash. CUDA events, warm-up, median of --reps runs.

Without CUDA it says so, runs a tiny correctness check of the kernels in Triton's interpreter (no
timings) and exits 0.

Usage: python benchmarks/bench_stats_kernel.py [--frames 5 10 21 48] [--heads 12] [--dim 128] [--reps 5]
       [--torch-max 40000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vditscope import TokenLayout, attention_stats

TEXT, HEIGHT, WIDTH = 512, 30, 52


def wan_layout(frames: int) -> TokenLayout:
    """512 text tokens, then frames x 30 x 52 video tokens (Wan 480p latents)."""
    return TokenLayout(frames, HEIGHT, WIDTH, video_start=TEXT, text=(0, TEXT))


def cuda_median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds, by CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def stats_pass_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> Callable[[], object]:
    """A closure running pass 2 alone (statistics, no output) on a log-sum-exp computed once beforehand."""
    from vditscope.stats import triton_stats as ts

    scale = q.shape[-1] ** -0.5
    launch = ts._make_launch(q, k, None, False, scale, interpret=False)
    lse2 = ts._lse_pass(launch)[0]

    def run() -> object:
        bufs = ts._make_buffers(q, k.shape[2], layout, True, None)
        return ts._stats_pass(launch, v, lse2, bufs, layout, None, want_max=False)

    return run


def time_size(frames: int, args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds of every variant at one size (the torch path only up to --torch-max tokens)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    layout = wan_layout(frames)
    n = TEXT + layout.num_video
    g = torch.Generator(device="cuda").manual_seed(n)
    shape = (1, args.heads, n, args.dim)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def flash() -> object:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    row = {"flash": cuda_median_ms(flash, args.reps)}
    row["stats"] = cuda_median_ms(stats_pass_only(q, k, v, layout), args.reps)
    row["triton"] = cuda_median_ms(lambda: attention_stats(q, k, v, layout=layout, backend="triton"), args.reps)
    if n <= args.torch_max:
        run_torch = lambda: attention_stats(q, k, v, layout=layout, backend="torch")  # noqa: E731
        row["torch"] = cuda_median_ms(run_torch, max(1, args.reps // 2), warmup=1)
    return row


def bench_cuda(args: argparse.Namespace) -> None:
    """The table, one row per size; a size that does not fit in memory says so and the next one runs."""
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 (1, {args.heads}, N, {args.dim}),")
    print(f"# layout: {TEXT} text tokens + frames x {HEIGHT} x {WIDTH} video; median of {args.reps} runs (ms)")
    names = ("flash", "stats", "triton", "torch")
    print(
        f"{'N':>6} " + " ".join(f"{name:>8}" for name in names) + " " + " ".join(f"{n + '/fl':>9}" for n in names[1:])
    )
    for frames in args.frames:
        n = TEXT + frames * HEIGHT * WIDTH
        try:
            row = time_size(frames, args)
        except torch.OutOfMemoryError:
            print(f"{n:>6} out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        times = " ".join(f"{row[name]:>8.2f}" if name in row else f"{'-':>8}" for name in names)
        ratios = " ".join(f"{row[name] / row['flash']:>9.2f}" if name in row else f"{'-':>9}" for name in names[1:])
        print(f"{n:>6} {times} {ratios}", flush=True)
        torch.cuda.empty_cache()


def interpreter_check() -> float:
    """Max |triton - dense float64 reference| over the output and every statistic on a tiny input."""
    from vditscope.stats.reference import dense_attention_stats

    os.environ["TRITON_INTERPRET"] = "1"  # read at call time by the kernel wrapper
    layout = TokenLayout(2, 3, 5, video_start=7, text=(0, 7))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g) * s for s in (3.0, 1.0, 1.0))
    out, stats = attention_stats(q, k, v, layout=layout, backend="triton", map_tiles=4)
    ref_out, ref = dense_attention_stats(q, k, v, layout=layout, map_tiles=4)
    errors = [(out.double() - ref_out).abs().max().item()]
    errors += [(stats[key].double() - value).abs().max().item() for key, value in ref.items()]
    return max(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 10, 21, 48], help="N = 512 + frames * 1560")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--torch-max", type=int, default=40000, help="largest N timed on the torch path")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("# no CUDA device here: no timings; checking the kernels in Triton's interpreter instead")
        try:
            import triton  # noqa: F401
        except ImportError:
            print("# triton is not installed: nothing to check")
            return
        error = interpreter_check()
        print(f"# interpreter: max |triton - float64 reference| over output and statistics = {error:.2e}")
        if error > 1e-4:
            sys.exit(f"kernel check failed: error {error:.2e}")
        return
    bench_cuda(args)


if __name__ == "__main__":
    main()
